package uffd_test

import (
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/testenv"
	"github.com/thawvm/thaw/internal/uffd"
	"github.com/thawvm/thaw/internal/uffd/uffdtest"
)

// TestPrefetchRate prefetches a whole memory file, nobody faulting, with
// and without a rate limit. With one, the prefetch takes at least size/rate
// and, at every moment it is sampled, has installed at most the rate's
// worth since Serve began plus one run; Stats report the limit and the
// time spent waiting for it. Without one, nothing waits.
func TestPrefetchRate(t *testing.T) {
	testenv.RequireUFFD(t)
	const size, run = 8 << 20, 256 << 10
	for _, tt := range []struct {
		name string
		rate uint64
	}{{"unlimited", 0}, {"16MiB/s", 16 << 20}} {
		rate := tt.rate
		t.Run(tt.name, func(t *testing.T) {
			noLeaks(t)
			path, src := memFile(t, size, 11)
			t0 := time.Now() // no later than Serve's start
			// The fake VMM waits for a go that never comes: it touches
			// nothing, so every page is the prefetcher's.
			s := startSession(t, uffdtest.Spec{MemFile: path, Regions: oneRegion(size), Threads: 1, Pattern: uffdtest.Random, WaitStart: true},
				src, uffd.ServerParams{Config: uffd.Config{PrefetchRunBytes: run, PrefetchRate: rate}})
			deadline := time.Now().Add(60 * time.Second)
			samples := 0
			for {
				st := s.srv.Stats()
				if rate != 0 {
					budget := float64(rate)*time.Since(t0).Seconds() + run
					if float64(st.PrefetchBytes) > budget {
						t.Fatalf("after %v: prefetched %d bytes, want at most %.0f (the rate since Serve began plus one run)", time.Since(t0), st.PrefetchBytes, budget)
					}
				}
				samples++
				if st.PrefetchDone {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("prefetch not done after 60s: %v", st)
				}
				time.Sleep(time.Millisecond)
			}
			st := s.srv.Stats()
			if st.PrefetchedPages != size/4096 || st.PrefetchBytes != size || st.FaultPages != 0 {
				t.Errorf("got %d pages (%d bytes) prefetched and %d faulted, want all %d prefetched", st.PrefetchedPages, st.PrefetchBytes, st.FaultPages, size/4096)
			}
			if st.PrefetchRate != rate {
				t.Errorf("stats prefetch rate: got %d, want %d", st.PrefetchRate, rate)
			}
			if rate == 0 {
				if st.PrefetchWait != 0 {
					t.Errorf("unlimited prefetch waited %v, want 0", st.PrefetchWait)
				}
				return
			}
			if min := time.Duration(size * uint64(time.Second) / rate); st.PrefetchTime < min {
				t.Errorf("prefetch of %d bytes at %d bytes/s took %v, want at least %v", size, rate, st.PrefetchTime, min)
			}
			// Waiting is most of a paced prefetch: the copies themselves
			// take a fraction of it.
			if st.PrefetchWait <= 0 || st.PrefetchWait > st.PrefetchTime {
				t.Errorf("prefetch waited %v of %v, want a positive part of it", st.PrefetchWait, st.PrefetchTime)
			}
			t.Logf("%d samples; %v", samples, st)
		})
	}
}

// TestPacedPrefetchServesFaults limits prefetch to one page a second, so
// that after its first run the prefetcher has nothing due for minutes, and
// then lets a fake VMM touch every page from 4 threads. Every fault must
// be served while the prefetch is paced: the VMM finishes (having checked
// every byte) with exactly one prefetch run made and the prefetch not
// done; and Serve, sleeping until a run due minutes later, still returns
// as soon as the VMM exits.
func TestPacedPrefetchServesFaults(t *testing.T) {
	testenv.RequireUFFD(t)
	noLeaks(t)
	const size, run = 16 << 20, 1 << 20
	path, src := memFile(t, size, 12)
	s := startSession(t, uffdtest.Spec{MemFile: path, Regions: oneRegion(size), Threads: 4, Pattern: uffdtest.Random, Writes: true, WaitStart: true, Seed: 12},
		src, uffd.ServerParams{Config: uffd.Config{PrefetchRunBytes: run, PrefetchRate: uffd.MinPrefetchRate}})
	deadline := time.Now().Add(10 * time.Second)
	for s.srv.Stats().PrefetchRuns == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no prefetch run after 10s")
		}
		time.Sleep(time.Millisecond)
	}
	if err := s.proc.Go(); err != nil {
		t.Fatal(err)
	}
	// Bounded, so that faults held behind the limit fail the test rather
	// than hang it.
	pages := uint64(size / 4096)
	deadline = time.Now().Add(30 * time.Second)
	for st := s.srv.Stats(); st.FaultPages+st.PrefetchedPages < pages; st = s.srv.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("after 30s only %d of %d pages installed: faults wait for the prefetch limit (%v)", st.FaultPages+st.PrefetchedPages, pages, st)
		}
		time.Sleep(time.Millisecond)
	}
	res, st := s.finish()
	if res.Touches != pages {
		t.Errorf("fake VMM touched %d pages, want %d", res.Touches, pages)
	}
	if st.PrefetchRuns != 1 || st.PrefetchDone {
		t.Errorf("got %d prefetch runs, done %v; want the one run made before the limit applied, not done", st.PrefetchRuns, st.PrefetchDone)
	}
	if st.PrefetchedPages != run/4096 || st.FaultPages+st.PrefetchedPages != pages {
		t.Errorf("prefetched %d + faulted %d pages, want %d prefetched and the rest (%d) by faults", st.PrefetchedPages, st.FaultPages, run/4096, pages-run/4096)
	}
	if got := st.Latency.Count(); got != st.Faults || st.Faults < st.FaultPages {
		t.Errorf("latency histogram holds %d faults of %d (%d pages installed), want every fault answered", got, st.Faults, st.FaultPages)
	}
	if st.PrefetchWait <= 0 {
		t.Errorf("prefetch wait %v, want the time Serve slept for the limit", st.PrefetchWait)
	}
	t.Logf("%v", st)
}

// TestPacedServeWakes checks that a page server whose next prefetch run
// is due minutes away sleeps until then (it does not spin: nothing wakes
// it while the test waits) and stops at once when its context ends.
func TestPacedServeWakes(t *testing.T) {
	testenv.RequireUFFD(t)
	noLeaks(t)
	const size = 4 << 20
	path, src := memFile(t, size, 13)
	s := startSession(t, uffdtest.Spec{MemFile: path, Regions: oneRegion(size), Threads: 1, Pattern: uffdtest.Random, WaitStart: true},
		src, uffd.ServerParams{Config: uffd.Config{PrefetchRate: uffd.MinPrefetchRate}})
	deadline := time.Now().Add(10 * time.Second)
	for s.srv.Stats().PrefetchRuns == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no prefetch run after 10s")
		}
		time.Sleep(time.Millisecond)
	}
	// A loop that polled with a zero timeout, or woke every millisecond,
	// would count hundreds of sleeps here; one that sleeps until the run
	// is due counts none (a signal interrupting poll(2) may add one).
	time.Sleep(300 * time.Millisecond)
	if st := s.srv.Stats(); st.PrefetchWaits > 2 {
		t.Errorf("%d sleeps for the limit in 300ms with the next run minutes away, want at most 2: Serve spins (%v)", st.PrefetchWaits, st)
	}
	s.cancel()
	if err := s.serveResult(5 * time.Second); err != nil {
		t.Fatalf("Serve after cancel: %v, want nil", err)
	}
	if st := s.srv.Stats(); st.PrefetchDone || st.PrefetchWait <= 0 || st.PrefetchWaits == 0 {
		t.Errorf("got done %v, wait %v in %d sleeps; want a paced prefetch cut short", st.PrefetchDone, st.PrefetchWait, st.PrefetchWaits)
	}
}
