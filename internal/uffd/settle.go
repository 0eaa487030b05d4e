package uffd

import (
	"context"
	"fmt"
	"time"
)

// SettleConfig defines when a recording run is done. Zero fields take the
// defaults in brackets.
//
// The detector samples the cumulative install count every Tick. At sample i
// (time t_i since the start, count c_i) the rate is
//
//	r_i = (c_i − c_{i−W}) / (t_i − t_{i−W})
//
// over a sliding window of W = Window samples (from the start while fewer
// than W samples exist). Peak is the largest r_i so far. A sample is quiet
// when Peak > 0 and r_i ≤ Fraction × Peak. Recording has settled at the
// first sample with t_i ≥ MinTime that ends a streak of Quiet quiet samples
// ("converged"), or at the first sample with t_i ≥ MaxTime ("max time"),
// whichever is first. Before the first install nothing is quiet, so a guest
// slow to start is not mistaken for a settled one; a run that installs
// nothing ends at MaxTime.
type SettleConfig struct {
	Tick     time.Duration // sampling interval [100ms]
	Window   int           // samples in the rate window [5]
	Fraction float64       // quiet threshold as a fraction of the peak rate [0.02]
	Quiet    int           // consecutive quiet samples needed [10]
	MinTime  time.Duration // never settle earlier [2s]
	MaxTime  time.Duration // always settle by then [60s]
}

func (c SettleConfig) withDefaults() SettleConfig {
	if c.Tick == 0 {
		c.Tick = 100 * time.Millisecond
	}
	if c.Window == 0 {
		c.Window = 5
	}
	if c.Fraction == 0 {
		c.Fraction = 0.02
	}
	if c.Quiet == 0 {
		c.Quiet = 10
	}
	if c.MinTime == 0 {
		c.MinTime = 2 * time.Second
	}
	if c.MaxTime == 0 {
		c.MaxTime = 60 * time.Second
	}
	return c
}

// Validate checks the configuration after applying defaults.
func (c SettleConfig) Validate() error {
	c = c.withDefaults()
	switch {
	case c.Tick < time.Millisecond:
		return fmt.Errorf("settle tick %v is shorter than 1ms", c.Tick)
	case c.Window < 1:
		return fmt.Errorf("settle window %d samples: want at least 1", c.Window)
	case c.Fraction < 0 || c.Fraction >= 1:
		return fmt.Errorf("settle fraction %v: want 0 ≤ fraction < 1", c.Fraction)
	case c.Quiet < 1:
		return fmt.Errorf("settle quiet streak %d samples: want at least 1", c.Quiet)
	case c.MinTime < 0 || c.MaxTime < c.MinTime:
		return fmt.Errorf("settle min time %v and max time %v: want 0 ≤ min ≤ max", c.MinTime, c.MaxTime)
	}
	return nil
}

// Settle reasons.
const (
	SettleConverged = "converged"
	SettleMaxTime   = "max time"
)

// Settle is the settle detector. It is a pure function of the samples fed
// to Observe (no clock, no goroutines), so synthetic traces test it exactly.
type Settle struct {
	cfg    SettleConfig
	times  []time.Duration // ring of the last Window+1 samples
	counts []uint64
	n      int
	peak   float64
	quiet  int
}

// NewSettle returns a detector; cfg must pass Validate.
func NewSettle(cfg SettleConfig) (*Settle, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	return &Settle{cfg: cfg, times: make([]time.Duration, cfg.Window+1), counts: make([]uint64, cfg.Window+1)}, nil
}

// Observe feeds the sample (at, count): at is the time since recording
// started, count the cumulative number of installs. It returns a non-empty
// reason once recording has settled.
func (s *Settle) Observe(at time.Duration, count uint64) string {
	w := s.cfg.Window
	s.n++
	slot := s.n % (w + 1)
	s.times[slot], s.counts[slot] = at, count
	// The window starts W samples back, or at the origin (0, 0).
	var t0 time.Duration
	var c0 uint64
	if s.n > w {
		back := (s.n - w) % (w + 1)
		t0, c0 = s.times[back], s.counts[back]
	}
	rate := 0.0
	if dt := at - t0; dt > 0 && count >= c0 {
		rate = float64(count-c0) / dt.Seconds()
	}
	if rate > s.peak {
		s.peak = rate
	}
	if s.peak > 0 && rate <= s.cfg.Fraction*s.peak {
		s.quiet++
	} else {
		s.quiet = 0
	}
	switch {
	case at >= s.cfg.MaxTime:
		return SettleMaxTime
	case at >= s.cfg.MinTime && s.quiet >= s.cfg.Quiet:
		return SettleConverged
	}
	return ""
}

// Peak returns the highest windowed rate seen, in installs per second.
func (s *Settle) Peak() float64 { return s.peak }

// WaitSettled samples count every cfg.Tick until the detector settles or
// ctx is done, and returns the reason. Use it with a recording server:
// count is typically func() uint64 { return rec.Count() }.
func WaitSettled(ctx context.Context, cfg SettleConfig, count func() uint64) (string, error) {
	s, err := NewSettle(cfg)
	if err != nil {
		return "", err
	}
	start := time.Now()
	t := time.NewTicker(s.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for recording to settle: %w", ctx.Err())
		case now := <-t.C:
			if reason := s.Observe(now.Sub(start), count()); reason != "" {
				return reason, nil
			}
		}
	}
}
