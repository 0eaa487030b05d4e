package main

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/thawvm/thaw/internal/uffd"
	"github.com/thawvm/thaw/internal/uffd/uffdtest"
)

// stress runs restore-like sessions back to back, each a fresh fake VMM
// whose threads fault on every page in random order while the prefetcher
// copies the file sequentially in small runs (so the two race on every
// page), until the page servers have handled target fault messages. Every
// byte is verified; a session whose VMM does not finish within its time
// limit has wedged threads and fails the run.
func stress(dir string, size int64, threads int, target uint64, log *slog.Logger) error {
	mem, src, err := memoryFile(dir, size, 99)
	if err != nil {
		return err
	}
	defer src.Close()
	half := uint64(size/2) &^ (2<<20 - 1)
	regions := []uffdtest.Layout{{Offset: 0, Size: half}, {Offset: half, Size: uint64(size) - half}}
	fmt.Printf("stress: %d MiB per session, %d threads, random order, prefetch in 64 KiB runs racing; target %d faults\n", size>>20, threads, target)
	var total uffd.Stats
	start := time.Now()
	sessions := 0
	for total.Faults < target {
		s, err := startSession(dir, uffdtest.Spec{MemFile: mem, Regions: regions, Threads: threads, Pattern: uffdtest.Random, Writes: sessions%2 == 1, Seed: uint64(sessions)},
			src, uffd.Config{PrefetchRunBytes: 64 << 10}, nil, log)
		if err != nil {
			return fmt.Errorf("session %d: %w", sessions, err)
		}
		res, st, err := s.wait(2 * time.Minute)
		if err != nil {
			return fmt.Errorf("session %d: %w", sessions, err)
		}
		if res.Touches != uint64(size/4096) {
			return fmt.Errorf("session %d: %d pages touched, want %d", sessions, res.Touches, size/4096)
		}
		if got := st.FaultPages + st.PrefetchedPages; got != uint64(size/4096) {
			return fmt.Errorf("session %d: %d pages installed, want each of %d exactly once", sessions, got, size/4096)
		}
		sessions++
		total.Faults += st.Faults
		total.FaultPages += st.FaultPages
		total.EEXIST += st.EEXIST
		total.PrefetchedPages += st.PrefetchedPages
		total.PrefetchRuns += st.PrefetchRuns
		total.ZeroPages += st.ZeroPages
		if sessions%10 == 0 {
			fmt.Printf("  %4d sessions  %9d faults  %v\n", sessions, total.Faults, time.Since(start).Round(time.Second))
		}
	}
	el := time.Since(start)
	fmt.Printf("ok: %d sessions, %d fault messages served (%d pages installed by faults, %d answered by a wake after EEXIST), %d pages prefetched in %d runs, %d zero pages, 0 wedged threads, 0 byte mismatches, %v (%.0f faults/s overall)\n",
		sessions, total.Faults, total.FaultPages, total.EEXIST, total.PrefetchedPages, total.PrefetchRuns, total.ZeroPages, el.Round(time.Second), float64(total.Faults)/el.Seconds())
	return nil
}
