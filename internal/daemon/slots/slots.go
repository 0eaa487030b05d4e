// Package slots bounds how many sandbox restores run at once
// (THAW_MAX_CONCURRENT_RESTORES). Waiting for a slot honours the caller's
// context, waiters are served first come first served, the bound can change
// while thawd runs, and Stats reports slots in use and callers waiting for
// the metrics endpoint.
package slots

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/thawvm/thaw/internal/errdefs"
)

// Slots is a resizable, context-aware counting semaphore with FIFO waiters.
// The zero value is not usable; call New.
type Slots struct {
	mu sync.Mutex
	// limit, inUse and waiters are guarded by mu.
	limit   int
	inUse   int
	waiters []*waiter // in arrival order
}

// waiter is one blocked Acquire. granted is closed once a slot was handed
// to it (under mu), which is final: a waiter that gives up after that must
// give the slot back.
type waiter struct {
	granted chan struct{}
}

// Stats is a snapshot of the slots' use.
type Stats struct {
	Limit   int `json:"limit"`
	InUse   int `json:"in_use"`
	Waiting int `json:"waiting"`
}

// New returns slots bounded at limit, which must be at least 1.
func New(limit int) (*Slots, error) {
	if err := checkLimit(limit); err != nil {
		return nil, err
	}
	return &Slots{limit: limit}, nil
}

func checkLimit(limit int) error {
	if limit < 1 {
		return errdefs.InvalidArgument("restore slot limit %d: must be at least 1", limit)
	}
	return nil
}

// Slot is one acquired slot. Release gives it back; releasing twice is
// harmless.
type Slot struct {
	s    *Slots
	once sync.Once
}

// Release gives the slot back, handing it to the longest waiter if any.
func (sl *Slot) Release() {
	sl.once.Do(func() {
		sl.s.mu.Lock()
		defer sl.s.mu.Unlock()
		sl.s.inUse--
		sl.s.grantLocked()
	})
}

// Acquire takes a slot, waiting behind earlier callers while all are in use.
// If ctx ends first, Acquire returns its error: a deadline is also marked
// ErrResourceExhausted (no slot came free in time, a client may retry), a
// cancellation stays canceled.
func (s *Slots) Acquire(ctx context.Context) (*Slot, error) {
	s.mu.Lock()
	if len(s.waiters) == 0 && s.inUse < s.limit {
		s.inUse++
		s.mu.Unlock()
		return &Slot{s: s}, nil
	}
	w := &waiter{granted: make(chan struct{})}
	s.waiters = append(s.waiters, w)
	s.mu.Unlock()

	select {
	case <-w.granted:
		return &Slot{s: s}, nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-w.granted:
		// Granted while we were giving up: pass the slot on.
		s.inUse--
		s.grantLocked()
	default:
		s.removeLocked(w)
	}
	err := fmt.Errorf("waiting for a restore slot (%d of %d in use, %d waiting): %w", s.inUse, s.limit, len(s.waiters), ctx.Err())
	if cause := context.Cause(ctx); cause != ctx.Err() {
		err = fmt.Errorf("%w: %w", err, cause)
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = errdefs.Mark(err, errdefs.ErrResourceExhausted)
	}
	return nil, err
}

// grantLocked hands free slots to waiters in arrival order.
func (s *Slots) grantLocked() {
	for s.inUse < s.limit && len(s.waiters) > 0 {
		w := s.waiters[0]
		s.waiters[0] = nil
		s.waiters = s.waiters[1:]
		s.inUse++
		close(w.granted)
	}
}

func (s *Slots) removeLocked(w *waiter) {
	for i, x := range s.waiters {
		if x == w {
			s.waiters = append(s.waiters[:i], s.waiters[i+1:]...)
			return
		}
	}
}

// Resize sets a new limit (at least 1). Growing hands the new slots to
// waiters at once; shrinking takes effect as slots in use are released.
func (s *Slots) Resize(limit int) error {
	if err := checkLimit(limit); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.limit = limit
	s.grantLocked()
	return nil
}

// Stats returns the current limit, slots in use and callers waiting. While
// a shrink is in progress InUse may exceed Limit.
func (s *Slots) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Limit: s.limit, InUse: s.inUse, Waiting: len(s.waiters)}
}
