package main

import (
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/thawvm/thaw/internal/conf"
	"github.com/thawvm/thaw/internal/uffd"
	"github.com/thawvm/thaw/internal/uffd/uffdtest"
)

// burst measures what other sandboxes' prefetches cost one being created,
// with and without a prefetch limit: sessions page servers start at once,
// each for a fake VMM that touches nothing (sandboxes created a moment
// earlier, whose prefetch of the whole file is under way), and with them
// one more whose toucher reads the working set of bench's (4) in recorded
// order under ordered prefetch, timing every first touch (the sandbox
// being created). Every page server has the same configuration, as under
// one thawd: unlimited, or limited to rate; a third variant has no other
// sessions at all. The variants alternate, reps times; medians are shown.
func burst(dir string, size int64, sessions, reps int, rate uint64, log *slog.Logger) error {
	if reps < 1 || sessions < 1 {
		return fmt.Errorf("reps %d, sessions %d: want at least 1 of each", reps, sessions)
	}
	mem, src, err := memoryFile(dir, size, 7)
	if err != nil {
		return err
	}
	defer src.Close()
	ws, logPath, order, err := workingSet(dir, src, size, log)
	if err != nil {
		return err
	}
	whole := []uffdtest.Layout{{Offset: 0, Size: uint64(size)}}
	fg := uffdtest.Spec{MemFile: mem, Regions: whole, Threads: 1, Pattern: uffdtest.List, List: logPath, Latencies: true}
	bg := uffdtest.Spec{MemFile: mem, Regions: whole, Threads: 1, Pattern: uffdtest.Disjoint, WaitStart: true}
	variants := []struct {
		name   string
		others int
		rate   uint64
	}{
		{"alone", 0, 0},
		{"among others, unlimited", sessions, 0},
		{"among others, all limited", sessions, rate},
	}
	t := samples{}
	faulted := map[string][]uint64{}
	bgBytes := map[string][]uint64{}
	for range reps {
		for _, v := range variants {
			cfg := uffd.Config{PrefetchRate: v.rate}
			var others []*session
			for range v.others {
				s, err := startSession(dir, bg, src, cfg, nil, log)
				if err != nil {
					for _, o := range others {
						o.close()
					}
					return err
				}
				others = append(others, s)
			}
			s, err := startSession(dir, fg, src, cfg, order, log)
			if err != nil {
				for _, o := range others {
					o.close()
				}
				return err
			}
			res, st, err := s.wait(5 * time.Minute)
			var copied uint64
			for _, o := range others {
				copied += o.srv.Stats().PrefetchBytes
				o.close()
			}
			if err != nil {
				return err
			}
			t.add(v.name, res.Elapsed)
			t.add(v.name+"p50", res.P50)
			t.add(v.name+"p99", res.P99)
			faulted[v.name] = append(faulted[v.name], st.FaultPages)
			bgBytes[v.name] = append(bgBytes[v.name], copied)
		}
	}
	fmt.Printf("burst: %d MiB file; the created sandbox reads a %d MiB working set in recorded order while %d others prefetch the whole file; limit %s; %d repetitions, medians\n",
		size>>20, int64(len(ws))*4096>>20, sessions, conf.ByteRate(rate), reps)
	for _, v := range variants {
		fs := slices.Clone(faulted[v.name])
		slices.Sort(fs)
		bs := slices.Clone(bgBytes[v.name])
		slices.Sort(bs)
		fmt.Printf("    %-26s %9v  first touch p50 %v p99 %v; pages installed by faults %d; others prefetched %d MiB meanwhile\n", v.name,
			t.med(v.name).Round(10*time.Microsecond), t.med(v.name+"p50"), t.med(v.name+"p99"), fs[len(fs)/2], bs[len(bs)/2]>>20)
	}
	return nil
}
