package main

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"time"

	"github.com/thawvm/thaw/internal/conf"
	"github.com/thawvm/thaw/internal/uffd"
	"github.com/thawvm/thaw/internal/uffd/uffdtest"
)

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func gibps(bytes int64, d time.Duration) float64 {
	return float64(bytes) / float64(1<<30) / d.Seconds()
}

// samples collects repeated measurements per variant. Every repetition runs
// every variant once, in turn, so that the machine's (shared, noisy) load
// affects all variants alike.
type samples map[string][]time.Duration

func (s samples) add(k string, d time.Duration) { s[k] = append(s[k], d) }
func (s samples) med(k string) time.Duration    { return median(s[k]) }

// bench runs the five measurements of docs/benchmarks/uffd.md side by side
// on one memory file, each reps times, and prints the medians; rate is the
// prefetch limit of (5).
func bench(dir string, size int64, reps int, rate uint64, log *slog.Logger) error {
	if reps < 1 {
		return fmt.Errorf("reps %d: want at least 1", reps)
	}
	mem, src, err := memoryFile(dir, size, 7)
	if err != nil {
		return err
	}
	defer src.Close()
	fmt.Printf("memory file %d MiB; %d repetitions, interleaved; medians shown\n\n", size>>20, reps)
	whole := []uffdtest.Layout{{Offset: 0, Size: uint64(size)}}
	// Warm up: the first use of fresh memory costs more on a VM host.
	if _, err := rawCopy(mem, 2<<20, false); err != nil {
		return err
	}

	// (1) Raw kernel limit.
	chunks := []int{4 << 10, 64 << 10, 2 << 20}
	raw := samples{}
	for range reps {
		for _, chunk := range chunks {
			for _, pop := range []bool{false, true} {
				d, err := rawCopy(mem, chunk, pop)
				if err != nil {
					return err
				}
				raw.add(fmt.Sprint(chunk, pop), d)
			}
		}
	}
	fmt.Println("(1) raw UFFDIO_COPY into a registered region, no faults: fresh source mapping | source pre-populated")
	for _, chunk := range chunks {
		d := raw.med(fmt.Sprint(chunk, false))
		fmt.Printf("    %4d KiB per ioctl: %5.2f GiB/s | %5.2f GiB/s  (%v per ioctl)\n", chunk>>10,
			gibps(size, d), gibps(size, raw.med(fmt.Sprint(chunk, true))), d/time.Duration(size/int64(chunk)))
	}

	// (2) On-demand serving.
	od := samples{}
	var faults uint64
	for range reps {
		for _, threads := range []int{1, 8} {
			s, err := startSession(dir, uffdtest.Spec{MemFile: mem, Regions: whole, Threads: threads, Pattern: uffdtest.Random, Latencies: true, Seed: 5},
				src, uffd.Config{DisablePrefetch: true}, nil, log)
			if err != nil {
				return err
			}
			res, st, err := s.wait(5 * time.Minute)
			if err != nil {
				return err
			}
			k := fmt.Sprint(threads)
			od.add(k, res.Elapsed)
			od.add(k+"p50", res.P50)
			od.add(k+"p99", res.P99)
			faults = st.FaultPages
		}
	}
	fmt.Println("\n(2) on-demand serving, prefetch off, random order, every page faulted once; latency as the toucher saw it")
	for _, threads := range []int{1, 8} {
		k := fmt.Sprint(threads)
		fmt.Printf("    %d thread(s): %7.0f faults/s  p50 %v  p99 %v\n", threads,
			float64(faults)/od.med(k).Seconds(), od.med(k+"p50"), od.med(k+"p99"))
	}

	// (3) Prefetch throughput, nobody faulting, each run paired with a raw
	// 2 MiB copy right before it (the ratio is taken per pair, so both
	// sides see the same load). The raw side uses a pre-populated source,
	// as the server's long-lived mapping is after its first use. Zero
	// pages are copied like the rest so that both sides do the same work;
	// one more line shows prefetch with zero pages on.
	runs := []uint64{256 << 10, 1 << 20, 2 << 20, 0}
	pf := samples{}
	ratios := map[uint64][]float64{}
	for range reps {
		for _, run := range runs {
			rawD, err := rawCopy(mem, 2<<20, true)
			if err != nil {
				return err
			}
			st, err := prefetchWhole(dir, mem, whole, src, uffd.Config{PrefetchRunBytes: run, DisableZeroPages: run != 0}, log)
			if err != nil {
				return err
			}
			if st.PrefetchedPages != uint64(size/4096) {
				return fmt.Errorf("prefetch installed %d pages, want all %d", st.PrefetchedPages, size/4096)
			}
			pf.add(fmt.Sprint(run), st.PrefetchTime)
			ratios[run] = append(ratios[run], rawD.Seconds()/st.PrefetchTime.Seconds())
		}
	}
	fmt.Println("\n(3) sequential prefetch of the whole file while the toucher waits (time to last page), each paired with a raw 2 MiB copy")
	for _, run := range runs {
		r := slices.Clone(ratios[run])
		slices.Sort(r)
		name := fmt.Sprintf("runs of %4d KiB", run>>10)
		if run == 0 {
			name = "default, zero pages on"
		}
		fmt.Printf("    %-22s %5.2f GiB/s; per pair %5.1f%% of raw 2 MiB (median; min %.1f%%, max %.1f%%)\n", name+":",
			gibps(size, pf.med(fmt.Sprint(run))), 100*r[len(r)/2], 100*r[0], 100*r[len(r)-1])
	}

	// (4) Working set.
	ws, logPath, order, err := workingSet(dir, src, size, log)
	if err != nil {
		return err
	}
	if err := benchWorkingSet(dir, mem, src, size, reps, ws, logPath, order, log); err != nil {
		return err
	}
	// (5) Prefetch under a rate limit.
	return benchPaced(dir, mem, src, size, reps, rate, logPath, order, log)
}

// workingSet records a working set of 20% of the file, scattered in 64 KiB
// runs, as an access log, and returns its offsets, path and loaded order.
func workingSet(dir string, src *uffd.FileSource, size int64, log *slog.Logger) ([]uint64, string, *uffd.AccessLog, error) {
	const run = 64 << 10
	runs := int(size / run)
	rng := rand.New(rand.NewPCG(11, 12))
	var ws []uint64
	for _, r := range rng.Perm(runs)[:runs/5] {
		for p := uint64(0); p < run; p += 4096 {
			ws = append(ws, uint64(r)*run+p)
		}
	}
	logPath := filepath.Join(dir, "workingset.log")
	rec, err := uffd.CreateRecorder(logPath, src, 4096)
	if err != nil {
		return nil, "", nil, err
	}
	for _, o := range ws {
		rec.Record(o)
	}
	if err := rec.Close(); err != nil {
		return nil, "", nil, err
	}
	order := uffd.LoadAccessLog(logPath, src, log)
	if order == nil {
		return nil, "", nil, fmt.Errorf("working-set log %s not usable", logPath)
	}
	return ws, logPath, order, nil
}

// benchWorkingSet: the working set read by one toucher thread in recorded
// order.
func benchWorkingSet(dir, mem string, src *uffd.FileSource, size int64, reps int, ws []uint64, logPath string, order *uffd.AccessLog, log *slog.Logger) error {
	whole := []uffdtest.Layout{{Offset: 0, Size: uint64(size)}}
	spec := uffdtest.Spec{MemFile: mem, Regions: whole, Threads: 1, Pattern: uffdtest.List, List: logPath}

	type variant struct {
		name  string
		cfg   uffd.Config
		order *uffd.AccessLog
		eager bool
	}
	variants := []variant{
		{"on-demand (no prefetch)", uffd.Config{DisablePrefetch: true}, nil, false},
		{"ordered prefetch", uffd.Config{}, order, false},
		{"eager full copy, then touch", uffd.Config{PrefetchRunBytes: 2 << 20}, nil, true},
	}
	t := samples{}
	faulted := map[string][]uint64{}
	for range reps {
		for _, v := range variants {
			sp := spec
			sp.WaitStart = v.eager
			s, err := startSession(dir, sp, src, v.cfg, v.order, log)
			if err != nil {
				return err
			}
			var copyTime time.Duration
			if v.eager {
				if err := s.waitPrefetch(5 * time.Minute); err != nil {
					s.close()
					return err
				}
				copyTime = s.srv.Stats().PrefetchTime
				s.proc.Go()
			}
			res, st, err := s.wait(5 * time.Minute)
			if err != nil {
				return err
			}
			t.add(v.name, res.Elapsed+copyTime)
			t.add(v.name+"copy", copyTime)
			faulted[v.name] = append(faulted[v.name], st.FaultPages)
		}
		sp := spec
		sp.Direct = true
		p, err := uffdtest.Start(sp)
		if err != nil {
			return err
		}
		res, err := p.Wait()
		if err != nil {
			return err
		}
		t.add("mmap", res.Elapsed)
	}
	fmt.Printf("\n(4) one toucher thread reads a recorded working set: %d MiB (20%%) in 64 KiB runs, in recorded order\n", int64(len(ws))*4096>>20)
	onDemand := t.med(variants[0].name)
	for _, v := range variants {
		d := t.med(v.name)
		extra := ""
		if v.eager {
			extra = fmt.Sprintf("  (copy %v + touch %v)", t.med(v.name+"copy").Round(time.Millisecond), (d - t.med(v.name+"copy")).Round(time.Millisecond))
		}
		fs := slices.Clone(faulted[v.name])
		slices.Sort(fs)
		fmt.Printf("    %-28s %9v  %5.1fx faster than on-demand; pages installed by faults: median %d = %.2f%% of the set (max %d)%s\n",
			v.name, d.Round(10*time.Microsecond), onDemand.Seconds()/d.Seconds(), fs[len(fs)/2], 100*float64(fs[len(fs)/2])/float64(len(ws)), fs[len(fs)-1], extra)
	}
	d := t.med("mmap")
	fmt.Printf("    %-28s %9v  %5.1fx faster than on-demand (no page server; page cache warm)\n", "plain MAP_PRIVATE mmap", d.Round(10*time.Microsecond), onDemand.Seconds()/d.Seconds())
	return nil
}

// benchPaced measures prefetch under Config.PrefetchRate: (5a) the whole
// file, nobody faulting, unlimited and limited in turn (the rate achieved
// and the share of the time spent waiting); (5b) the working set of (4)
// read by one toucher while the ordered prefetch is paced, against on
// demand and unlimited ordered prefetch, with the first-touch latencies the
// toucher saw: a fault must not wait for the limit.
func benchPaced(dir, mem string, src *uffd.FileSource, size int64, reps int, rate uint64, logPath string, order *uffd.AccessLog, log *slog.Logger) error {
	whole := []uffdtest.Layout{{Offset: 0, Size: uint64(size)}}
	full := samples{}
	var waitShare []float64
	for range reps {
		for _, r := range []uint64{0, rate} {
			st, err := prefetchWhole(dir, mem, whole, src, uffd.Config{PrefetchRate: r}, log)
			if err != nil {
				return err
			}
			if st.PrefetchBytes != uint64(size) {
				return fmt.Errorf("prefetch installed %d bytes, want all %d", st.PrefetchBytes, size)
			}
			full.add(fmt.Sprint(r), st.PrefetchTime)
			if r != 0 {
				waitShare = append(waitShare, st.PrefetchWait.Seconds()/st.PrefetchTime.Seconds())
			}
		}
	}
	slices.Sort(waitShare)
	limited := full.med(fmt.Sprint(rate))
	fmt.Printf("\n(5a) prefetch of the whole file, nobody faulting, limit %s\n", conf.ByteRate(rate))
	fmt.Printf("    unlimited:        %5.2f GiB/s\n", gibps(size, full.med("0")))
	fmt.Printf("    limited:          %7.1f MiB/s = %.1f%% of the limit (at least %v expected, took %v); waiting %.0f%% of that time\n",
		float64(size)/float64(1<<20)/limited.Seconds(), 100*float64(size)/limited.Seconds()/float64(rate),
		time.Duration(uint64(size)*uint64(time.Second)/rate).Round(time.Millisecond), limited.Round(time.Millisecond), 100*waitShare[len(waitShare)/2])

	spec := uffdtest.Spec{MemFile: mem, Regions: whole, Threads: 1, Pattern: uffdtest.List, List: logPath, Latencies: true}
	variants := []struct {
		name  string
		cfg   uffd.Config
		order *uffd.AccessLog
	}{
		{"on-demand (no prefetch)", uffd.Config{DisablePrefetch: true}, nil},
		{"ordered prefetch", uffd.Config{}, order},
		{"ordered prefetch, limited", uffd.Config{PrefetchRate: rate}, order},
	}
	t := samples{}
	faulted := map[string][]uint64{}
	for range reps {
		for _, v := range variants {
			s, err := startSession(dir, spec, src, v.cfg, v.order, log)
			if err != nil {
				return err
			}
			res, st, err := s.wait(5 * time.Minute)
			if err != nil {
				return err
			}
			t.add(v.name, res.Elapsed)
			t.add(v.name+"p50", res.P50)
			t.add(v.name+"p99", res.P99)
			faulted[v.name] = append(faulted[v.name], st.FaultPages)
		}
	}
	fmt.Printf("\n(5b) the working set of (4), read by one toucher timing each first touch, prefetch limited to %s\n", conf.ByteRate(rate))
	for _, v := range variants {
		fs := slices.Clone(faulted[v.name])
		slices.Sort(fs)
		fmt.Printf("    %-26s %9v  first touch p50 %v p99 %v; pages installed by faults: median %d\n", v.name,
			t.med(v.name).Round(10*time.Microsecond), t.med(v.name+"p50"), t.med(v.name+"p99"), fs[len(fs)/2])
	}
	return nil
}
