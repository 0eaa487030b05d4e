package virtio

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Guest-driven logging budget: a burst, then a steady rate per device.
const (
	logBurst = 20
	logRate  = 5 // records per second
)

// LimitLogs returns a logger that passes at most logBurst records at once
// and logRate per second after that, counting the rest and reporting the
// count ("suppressed") on the next record that gets through. Devices log
// what the guest does wrong through it, so a guest misbehaving in a loop
// cannot flood the host's logs.
func LimitLogs(log *slog.Logger) *slog.Logger {
	return slog.New(&limitHandler{h: log.Handler(), s: &limitState{tokens: logBurst}})
}

type limitState struct {
	mu sync.Mutex
	// guarded by mu
	tokens  float64
	last    time.Time
	dropped int
}

// take spends one token if there is one, and returns how many records were
// dropped since the last one that got through.
func (s *limitState) take(now time.Time) (ok bool, dropped int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.last.IsZero() {
		s.tokens = min(logBurst, s.tokens+now.Sub(s.last).Seconds()*logRate)
	}
	s.last = now
	if s.tokens < 1 {
		s.dropped++
		return false, 0
	}
	s.tokens--
	dropped, s.dropped = s.dropped, 0
	return true, dropped
}

type limitHandler struct {
	h slog.Handler
	s *limitState
}

func (l *limitHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return l.h.Enabled(ctx, level)
}

func (l *limitHandler) Handle(ctx context.Context, r slog.Record) error {
	ok, dropped := l.s.take(time.Now())
	if !ok {
		return nil
	}
	if dropped > 0 {
		r.AddAttrs(slog.Int("suppressed", dropped))
	}
	return l.h.Handle(ctx, r)
}

func (l *limitHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &limitHandler{h: l.h.WithAttrs(attrs), s: l.s}
}

func (l *limitHandler) WithGroup(name string) slog.Handler {
	return &limitHandler{h: l.h.WithGroup(name), s: l.s}
}
