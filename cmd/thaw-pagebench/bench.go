package main

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"time"

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

// bench runs the four measurements of docs/benchmarks/uffd.md side by side
// on one memory file, each reps times, and prints the medians.
func bench(dir string, size int64, reps int, log *slog.Logger) error {
	if reps < 1 {
		return fmt.Errorf("reps %d: want at least 1", reps)
	}
	mem := filepath.Join(dir, "memory")
	if err := uffdtest.WriteMemoryFile(mem, size, 7); err != nil {
		return err
	}
	src, err := uffd.OpenFile(mem)
	if err != nil {
		return err
	}
	defer src.Close()
	fmt.Printf("memory file %d MiB; %d repetitions per line, median shown\n\n", size>>20, reps)
	whole := []uffdtest.Layout{{Offset: 0, Size: uint64(size)}}

	// (1) Raw kernel limit.
	fmt.Println("(1) raw UFFDIO_COPY into a registered region, no faults (fresh source mapping | pre-populated)")
	raw := map[int]time.Duration{}
	for _, chunk := range []int{4 << 10, 64 << 10, 2 << 20} {
		var fresh, pop []time.Duration
		for range reps {
			d, err := rawCopy(mem, chunk, false)
			if err != nil {
				return err
			}
			fresh = append(fresh, d)
			d, err = rawCopy(mem, chunk, true)
			if err != nil {
				return err
			}
			pop = append(pop, d)
		}
		raw[chunk] = median(fresh)
		fmt.Printf("    %4d KiB per ioctl: %6.2f GiB/s | %6.2f GiB/s  (%v per ioctl)\n", chunk>>10,
			gibps(size, median(fresh)), gibps(size, median(pop)), median(fresh)/time.Duration(size/int64(chunk)))
	}

	// (2) On-demand serving.
	fmt.Println("\n(2) on-demand serving, prefetch off, random order, every page faulted once")
	for _, threads := range []int{1, 8} {
		var el, p50, p99 []time.Duration
		var faults uint64
		for range reps {
			s, err := startSession(dir, uffdtest.Spec{MemFile: mem, Regions: whole, Threads: threads, Pattern: uffdtest.Random, Latencies: true, Seed: 5},
				src, uffd.Config{DisablePrefetch: true}, nil, log)
			if err != nil {
				return err
			}
			res, st, err := s.wait(5 * time.Minute)
			if err != nil {
				return err
			}
			el, p50, p99 = append(el, res.Elapsed), append(p50, res.P50), append(p99, res.P99)
			faults = st.FaultPages
		}
		fmt.Printf("    %d thread(s): %8.0f faults/s  touch latency p50 %v p99 %v\n", threads,
			float64(faults)/median(el).Seconds(), median(p50), median(p99))
	}

	// (3) Prefetch throughput, nobody faulting.
	fmt.Println("\n(3) sequential prefetch of the whole file while the toucher waits, vs the raw 2 MiB rate")
	for _, run := range []uint64{256 << 10, 1 << 20, 2 << 20} {
		var ds []time.Duration
		for range reps {
			s, err := startSession(dir, uffdtest.Spec{MemFile: mem, Regions: whole, Threads: 1, Pattern: uffdtest.Disjoint, WaitStart: true},
				src, uffd.Config{PrefetchRunBytes: run}, nil, log)
			if err != nil {
				return err
			}
			if err := s.waitPrefetch(5 * time.Minute); err != nil {
				s.close()
				return err
			}
			st := s.srv.Stats()
			s.proc.Go() // then verify every byte
			if _, _, err := s.wait(5 * time.Minute); err != nil {
				return err
			}
			ds = append(ds, st.PrefetchTime)
		}
		d := median(ds)
		fmt.Printf("    runs of %4d KiB: %6.2f GiB/s = %5.1f%% of raw 2 MiB (fresh source)\n", run>>10, gibps(size, d), 100*raw[2<<20].Seconds()/d.Seconds())
	}

	// (4) Working set.
	return benchWorkingSet(dir, mem, src, size, reps, log)
}

// benchWorkingSet: a recorded working set of 20% of the file, scattered in
// 64 KiB runs, read by one toucher thread in recorded order.
func benchWorkingSet(dir, mem string, src *uffd.FileSource, size int64, reps int, log *slog.Logger) error {
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
		return err
	}
	for _, o := range ws {
		rec.Record(o)
	}
	if err := rec.Close(); err != nil {
		return err
	}
	order := uffd.LoadAccessLog(logPath, src, log)
	if order == nil {
		return fmt.Errorf("working-set log %s not usable", logPath)
	}
	whole := []uffdtest.Layout{{Offset: 0, Size: uint64(size)}}
	spec := uffdtest.Spec{MemFile: mem, Regions: whole, Threads: 1, Pattern: uffdtest.List, List: logPath}
	fmt.Printf("\n(4) toucher reads a recorded working set: %d MiB (20%%) in 64 KiB runs, recorded order, 1 thread\n", int64(len(ws))*4096>>20)

	var onDemand time.Duration
	type row struct {
		name  string
		cfg   uffd.Config
		order *uffd.AccessLog
		eager bool
	}
	for _, r := range []row{
		{"on-demand (no prefetch)", uffd.Config{DisablePrefetch: true}, nil, false},
		{"ordered prefetch", uffd.Config{}, order, false},
		{"eager full copy, then touch", uffd.Config{PrefetchRunBytes: 2 << 20}, nil, true},
	} {
		var ds, copies []time.Duration
		var faulted, faults uint64
		for range reps {
			sp := spec
			sp.WaitStart = r.eager
			s, err := startSession(dir, sp, src, r.cfg, r.order, log)
			if err != nil {
				return err
			}
			var copyTime time.Duration
			if r.eager {
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
			ds, copies = append(ds, res.Elapsed+copyTime), append(copies, copyTime)
			faulted, faults = st.FaultPages, st.Faults
		}
		d := median(ds)
		if onDemand == 0 {
			onDemand = d
		}
		extra := ""
		if r.eager {
			extra = fmt.Sprintf(" (copy %v + touch %v)", median(copies).Round(time.Millisecond), (d - median(copies)).Round(time.Millisecond))
		}
		fmt.Printf("    %-28s %9v  %5.1fx vs on-demand  pages installed by faults: %d (%.2f%% of the set), fault messages: %d%s\n",
			r.name, d.Round(10*time.Microsecond), onDemand.Seconds()/d.Seconds(), faulted, 100*float64(faulted)/float64(len(ws)), faults, extra)
	}
	var ds []time.Duration
	for range reps {
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
		ds = append(ds, res.Elapsed)
	}
	d := median(ds)
	fmt.Printf("    %-28s %9v  %5.1fx vs on-demand  (no page server; page cache warm)\n", "plain MAP_PRIVATE mmap", d.Round(10*time.Microsecond), onDemand.Seconds()/d.Seconds())
	return nil
}
