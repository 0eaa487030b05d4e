package uffd

import (
	"math/bits"
	"math/rand/v2"
	"testing"
	"time"
)

func TestPacer(t *testing.T) {
	const rate, run = 1 << 20, 256 << 10 // 1 MiB/s, 256 KiB runs: 250 ms each
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	ms := time.Millisecond
	tests := []struct {
		name string
		// steps: charge run bytes at each time (a run starting then), in order
		runs []time.Duration
		// then the delay asked at now must be want
		now  time.Duration
		want time.Duration
	}{
		{"first run is due at once", nil, 0, 0},
		{"a run makes the next wait its cost", []time.Duration{0}, 0, 250 * ms},
		{"part of the cost already passed", []time.Duration{0}, 100 * ms, 150 * ms},
		{"due runs wait nothing", []time.Duration{0, 250 * ms}, 500 * ms, 0},
		// Wake-ups a millisecond late (poll's granularity) do not drift:
		// the next run is due 250 ms after the previous one was due.
		{"late wake-ups keep the rate", []time.Duration{0, 251 * ms, 502 * ms, 753 * ms}, 753 * ms, 247 * ms},
		// After a long spell without runs (faults kept the loop busy) the
		// credit is one run: the next run may start at once, the one after
		// it waits.
		{"an idle spell leaves one run of credit", []time.Duration{0, 10 * time.Second}, 10 * time.Second, 0},
		{"and no more", []time.Duration{0, 10 * time.Second, 10 * time.Second}, 10 * time.Second, 250 * ms},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPacer(rate, run, t0)
			for _, r := range tt.runs {
				if d := p.delay(at(r)); d > 0 {
					t.Fatalf("setup: a run at %v is not due (delay %v)", r, d)
				}
				p.charge(at(r), run)
			}
			if got := p.delay(at(tt.now)); got != tt.want {
				t.Errorf("delay at %v: got %v, want %v", tt.now, got, tt.want)
			}
		})
	}
}

// TestPacerNeverOvershoots drives a pacer the way Serve does, with runs of
// random sizes, random late wake-ups and random spells of faults, and
// checks the bound Config.PrefetchRate promises: when a run starts at t,
// the bytes charged before it are at most rate·t.
func TestPacerNeverOvershoots(t *testing.T) {
	const rate, maxRun = 3 << 20, 1 << 20
	rng := rand.New(rand.NewPCG(1, 2))
	t0 := time.Unix(1000, 0)
	p := newPacer(rate, maxRun, t0)
	now := t0
	var charged uint64
	for i := range 100000 {
		if d := p.delay(now); d > 0 {
			// Serve sleeps, wakes up to 2 ms late, or early for a fault.
			switch rng.IntN(4) {
			case 0:
				now = now.Add(time.Duration(rng.Int64N(int64(d))))
			default:
				now = now.Add(d + time.Duration(rng.Int64N(int64(2*time.Millisecond))))
			}
			continue
		}
		hi, lo := bits.Mul64(uint64(now.Sub(t0)), rate)
		budget, _ := bits.Div64(hi, lo, uint64(time.Second))
		if charged > budget {
			t.Fatalf("run %d at %v: %d bytes already charged, want at most %d (rate·t)", i, now.Sub(t0), charged, budget)
		}
		n := uint64(1+rng.IntN(maxRun/4096)) * 4096
		p.charge(now, n)
		charged += n
		if rng.IntN(100) == 0 {
			now = now.Add(time.Duration(rng.Int64N(int64(time.Second)))) // a spell of faults
		}
	}
	// Over the whole simulation the pacer kept the rate, not less: the
	// wake-up lateness was absorbed by the one run of slack.
	elapsed := now.Sub(t0).Seconds()
	if got := float64(charged) / elapsed; got < 0.8*rate || got > 1.001*rate {
		t.Errorf("average rate %.0f bytes/s, want close to the %d limit and not above it", got, rate)
	}
}

func TestConfigValidatePrefetchRate(t *testing.T) {
	tests := []struct {
		cfg     Config
		wantErr bool
	}{
		{Config{}, false},
		{Config{PrefetchRate: MinPrefetchRate}, false},
		{Config{PrefetchRate: 200 << 20}, false},
		{Config{PrefetchRate: 1}, true},
		{Config{PrefetchRate: MinPrefetchRate - 1}, true},
		{Config{PrefetchRate: 1 << 20, DisablePrefetch: true}, true},
		{Config{DisablePrefetch: true}, false},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		if (err != nil) != tt.wantErr {
			t.Errorf("Validate(%+v): got %v, want error %v", tt.cfg, err, tt.wantErr)
		}
	}
}
