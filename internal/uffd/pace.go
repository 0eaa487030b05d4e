package uffd

import "time"

// pacer spaces prefetch runs so that the prefetcher installs at most rate
// bytes per second (Config.PrefetchRate). It is a virtual clock: next is
// when the bytes installed so far would have finished at exactly the rate,
// and a run may start only once the real clock has reached it. A run is
// charged after it is copied (its size is known only then), so by any
// moment t since Serve began the prefetcher has installed at most
// rate·t plus the one run that started last. Faults are never paced.
type pacer struct {
	rate uint64 // bytes per second, > 0
	// slack is the credit an idle spell may leave (one full run's time):
	// a serve loop that wakes a little late, or was kept busy by faults,
	// catches up by that much and no more, so pacing does not drift below
	// the rate with poll(2)'s millisecond granularity, and a burst after a
	// long spell of faults stays within one run.
	slack time.Duration
	next  time.Time
}

// newPacer returns a pacer for rate bytes per second whose first run may
// start at start, with runBytes the largest run.
func newPacer(rate, runBytes uint64, start time.Time) *pacer {
	p := &pacer{rate: rate, next: start}
	p.slack = p.cost(runBytes)
	return p
}

// cost is how long n bytes take at the rate. Runs are at most 64 MiB
// (Config.Validate), so n·1e9 cannot overflow.
func (p *pacer) cost(n uint64) time.Duration {
	return time.Duration(n * uint64(time.Second) / p.rate)
}

// delay returns how long after now the next run may start; 0 means now.
func (p *pacer) delay(now time.Time) time.Duration {
	return max(p.next.Sub(now), 0)
}

// charge accounts n bytes installed by a run that started at now (which
// delay allowed).
func (p *pacer) charge(now time.Time, n uint64) {
	if floor := now.Add(-p.slack); p.next.Before(floor) {
		p.next = floor
	}
	p.next = p.next.Add(p.cost(n))
}
