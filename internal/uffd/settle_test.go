package uffd

import (
	"context"
	"testing"
	"time"
)

// trace feeds per-tick install counts (not cumulative) to a detector and
// returns the tick (1-based) at which it settled and why, or 0.
func trace(t *testing.T, cfg SettleConfig, perTick func(i int) uint64, ticks int) (int, string) {
	t.Helper()
	s, err := NewSettle(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var total uint64
	for i := 1; i <= ticks; i++ {
		total += perTick(i)
		if reason := s.Observe(time.Duration(i)*cfg.Tick, total); reason != "" {
			return i, reason
		}
	}
	return 0, ""
}

func TestSettle(t *testing.T) {
	base := SettleConfig{Tick: 100 * time.Millisecond, Window: 5, Fraction: 0.05, Quiet: 10, MinTime: time.Second, MaxTime: 10 * time.Second}
	tests := []struct {
		name       string
		cfg        SettleConfig
		perTick    func(i int) uint64
		wantTick   int
		wantReason string
	}{
		{
			// 20 busy ticks, then nothing: the window rate falls to 0 at
			// tick 25 (the window has slid past the burst), the first
			// quiet sample; 10 quiet samples end at tick 34.
			name:     "burst then silence",
			cfg:      base,
			perTick:  func(i int) uint64 { return map[bool]uint64{true: 1000, false: 0}[i <= 20] },
			wantTick: 34, wantReason: SettleConverged,
		},
		{
			name:     "constant rate never converges",
			cfg:      base,
			perTick:  func(int) uint64 { return 500 },
			wantTick: 100, wantReason: SettleMaxTime,
		},
		{
			name:     "no installs runs to max time",
			cfg:      base,
			perTick:  func(int) uint64 { return 0 },
			wantTick: 100, wantReason: SettleMaxTime,
		},
		{
			// Installs start late (ticks 30-39): the silence before them
			// is not quiet; the window rate is 0 again from tick 44 and the
			// tenth quiet sample is tick 53.
			name:     "slow start is not settled",
			cfg:      base,
			perTick:  func(i int) uint64 { return map[bool]uint64{true: 1000, false: 0}[i >= 30 && i < 40] },
			wantTick: 53, wantReason: SettleConverged,
		},
		{
			// Quiet from tick 6 on, but MinTime (3s) holds it to tick 30.
			name:     "min time holds an early quiet",
			cfg:      SettleConfig{Tick: 100 * time.Millisecond, Window: 1, Fraction: 0.05, Quiet: 3, MinTime: 3 * time.Second, MaxTime: 10 * time.Second},
			perTick:  func(i int) uint64 { return map[bool]uint64{true: 1000, false: 0}[i <= 5] },
			wantTick: 30, wantReason: SettleConverged,
		},
		{
			// A second burst at ticks 12-13 resets the quiet streak begun
			// at tick 6: the streak restarts at tick 14 and completes at 23.
			name:     "second burst resets the streak",
			cfg:      SettleConfig{Tick: 100 * time.Millisecond, Window: 1, Fraction: 0.05, Quiet: 10, MinTime: 100 * time.Millisecond, MaxTime: 10 * time.Second},
			perTick:  func(i int) uint64 { return map[bool]uint64{true: 1000, false: 0}[i <= 5 || i == 12 || i == 13] },
			wantTick: 23, wantReason: SettleConverged,
		},
		{
			// A trickle of 1% of the peak rate counts as quiet (Fraction
			// 5%); 3% does not with Fraction 2%.
			name:     "trickle under the fraction is quiet",
			cfg:      SettleConfig{Tick: 100 * time.Millisecond, Window: 1, Fraction: 0.05, Quiet: 5, MinTime: 100 * time.Millisecond, MaxTime: 10 * time.Second},
			perTick:  func(i int) uint64 { return map[bool]uint64{true: 1000, false: 10}[i <= 3] },
			wantTick: 8, wantReason: SettleConverged,
		},
		{
			name:     "trickle over the fraction is not quiet",
			cfg:      SettleConfig{Tick: 100 * time.Millisecond, Window: 1, Fraction: 0.02, Quiet: 5, MinTime: 100 * time.Millisecond, MaxTime: 2 * time.Second},
			perTick:  func(i int) uint64 { return map[bool]uint64{true: 1000, false: 30}[i <= 3] },
			wantTick: 20, wantReason: SettleMaxTime,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tick, reason := trace(t, tt.cfg, tt.perTick, 1000)
			if tick != tt.wantTick || reason != tt.wantReason {
				t.Errorf("settled at tick %d (%q), want tick %d (%q)", tick, reason, tt.wantTick, tt.wantReason)
			}
		})
	}
}

func TestSettleConfigValidate(t *testing.T) {
	tests := []struct {
		cfg  SettleConfig
		good bool
	}{
		{SettleConfig{}, true},
		{SettleConfig{Tick: time.Microsecond}, false},
		{SettleConfig{Window: -1}, false},
		{SettleConfig{Fraction: 1}, false},
		{SettleConfig{Quiet: -2}, false},
		{SettleConfig{MinTime: time.Minute, MaxTime: time.Second}, false},
	}
	for _, tt := range tests {
		if err := tt.cfg.Validate(); (err == nil) != tt.good {
			t.Errorf("%+v: Validate() = %v, want ok=%t", tt.cfg, err, tt.good)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		cfg  Config
		good bool
	}{
		{Config{}, true},
		{Config{PollInterval: time.Microsecond}, false},
		{Config{PollInterval: time.Hour}, false},
		{Config{BatchSize: 5000}, false},
		{Config{BatchSize: -1}, false},
		{Config{PrefetchRunBytes: 1000}, false},
		{Config{PrefetchRunBytes: 128 << 20}, false},
		{Config{PrefetchRunBytes: 64 << 10, BatchSize: 16, PollInterval: time.Millisecond}, true},
	}
	for _, tt := range tests {
		if err := tt.cfg.Validate(); (err == nil) != tt.good {
			t.Errorf("%+v: Validate() = %v, want ok=%t", tt.cfg, err, tt.good)
		}
	}
}

func TestWaitSettled(t *testing.T) {
	cfg := SettleConfig{Tick: 5 * time.Millisecond, Window: 2, Fraction: 0.1, Quiet: 4, MinTime: 20 * time.Millisecond, MaxTime: 5 * time.Second}
	var n uint64
	calls := 0
	count := func() uint64 {
		calls++
		if calls <= 5 {
			n += 100 // a burst, then silence
		}
		return n
	}
	reason, err := WaitSettled(t.Context(), cfg, count)
	if err != nil || reason != SettleConverged {
		t.Fatalf("got %q, %v; want %q", reason, err, SettleConverged)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := WaitSettled(ctx, cfg, count); err == nil {
		t.Error("WaitSettled with a cancelled context succeeded")
	}
}
