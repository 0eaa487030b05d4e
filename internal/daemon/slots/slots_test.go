package slots

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/errdefs"
)

func mustNew(t *testing.T, limit int) *Slots {
	t.Helper()
	s, err := New(limit)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Invariant when a test ends: nothing held, nobody waiting.
		if st := s.Stats(); st.InUse != 0 || st.Waiting != 0 {
			t.Errorf("at end: %+v, want nothing in use or waiting (a slot leaked)", st)
		}
	})
	return s
}

// waitFor polls cond until it holds; it is how tests see a goroutine block
// without sleeping a guessed time.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func acquire(t *testing.T, s *Slots) *Slot {
	t.Helper()
	sl, err := s.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return sl
}

func TestBadLimit(t *testing.T) {
	for _, n := range []int{0, -1} {
		if _, err := New(n); !errdefs.IsInvalidArgument(err) {
			t.Errorf("New(%d): got %v, want invalid argument", n, err)
		}
	}
	s := mustNew(t, 1)
	if err := s.Resize(0); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Resize(0): got %v, want invalid argument", err)
	}
}

func TestBlocksAtLimitAndHandsOver(t *testing.T) {
	s := mustNew(t, 2)
	a, b := acquire(t, s), acquire(t, s)
	got := make(chan *Slot)
	go func() { got <- acquire(t, s) }()
	waitFor(t, "the third caller waits", func() bool { return s.Stats().Waiting == 1 })
	if st, want := s.Stats(), (Stats{Limit: 2, InUse: 2, Waiting: 1}); st != want {
		t.Errorf("Stats = %+v, want %+v", st, want)
	}
	select {
	case <-got:
		t.Fatal("third Acquire returned while both slots were held")
	default:
	}
	a.Release()
	c := <-got
	if st, want := s.Stats(), (Stats{Limit: 2, InUse: 2, Waiting: 0}); st != want {
		t.Errorf("after hand-over: Stats = %+v, want %+v", st, want)
	}
	a.Release() // a second release must not free another slot
	if st := s.Stats(); st.InUse != 2 {
		t.Errorf("double Release changed InUse to %d, want 2", st.InUse)
	}
	b.Release()
	c.Release()
}

func TestWaitHonoursContext(t *testing.T) {
	tests := []struct {
		name      string
		ctx       func() (context.Context, context.CancelFunc)
		exhausted bool
		is        func(error) bool
	}{
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 20*time.Millisecond)
		}, true, errdefs.IsDeadlineExceeded},
		{"cancel", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(20*time.Millisecond, cancel)
			return ctx, cancel
		}, false, errdefs.IsCanceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustNew(t, 1)
			held := acquire(t, s)
			ctx, cancel := tt.ctx()
			defer cancel()
			sl, err := s.Acquire(ctx)
			if err == nil {
				sl.Release()
				t.Fatal("Acquire succeeded while the only slot was held")
			}
			if !tt.is(err) || errdefs.IsResourceExhausted(err) != tt.exhausted {
				t.Errorf("got %v (resource exhausted: %v), want context kind with exhausted=%v", err, errdefs.IsResourceExhausted(err), tt.exhausted)
			}
			if st := s.Stats(); st.Waiting != 0 || st.InUse != 1 {
				t.Errorf("after giving up: %+v, want 1 in use and no waiter", st)
			}
			held.Release()
		})
	}
}

func TestFIFO(t *testing.T) {
	s := mustNew(t, 1)
	held := acquire(t, s)
	const n = 5
	order := make(chan int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			sl := acquire(t, s)
			order <- i
			sl.Release()
		})
		waitFor(t, "the caller queues", func() bool { return s.Stats().Waiting == i+1 })
	}
	held.Release()
	wg.Wait()
	close(order)
	want := 0
	for got := range order {
		if got != want {
			t.Errorf("caller %d got a slot in turn %d, want first come first served", got, want)
		}
		want++
	}
}

func TestResize(t *testing.T) {
	s := mustNew(t, 1)
	a := acquire(t, s)
	got := make(chan *Slot, 2)
	for range 2 {
		go func() { got <- acquire(t, s) }()
	}
	waitFor(t, "two callers wait", func() bool { return s.Stats().Waiting == 2 })
	if err := s.Resize(3); err != nil {
		t.Fatal(err)
	}
	b, c := <-got, <-got // growing hands both new slots out at once
	if st, want := s.Stats(), (Stats{Limit: 3, InUse: 3}); st != want {
		t.Errorf("after growing: %+v, want %+v", st, want)
	}
	if err := s.Resize(1); err != nil {
		t.Fatal(err)
	}
	go func() { got <- acquire(t, s) }()
	waitFor(t, "a caller waits after shrinking", func() bool { return s.Stats().Waiting == 1 })
	a.Release()
	b.Release()
	select {
	case <-got:
		t.Fatal("a slot was granted while 1 was still in use under limit 1")
	case <-time.After(20 * time.Millisecond):
	}
	c.Release()
	(<-got).Release()
}

// TestStress: many callers, random deadlines and resizes; the bound is never
// exceeded and nothing leaks (checked in cleanup). Run it with -race.
func TestStress(t *testing.T) {
	const maxLimit = 4
	s := mustNew(t, 2)
	var inside, over atomic.Int32
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() {
			for j := range 20 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rand.IntN(3000))*time.Microsecond)
				sl, err := s.Acquire(ctx)
				cancel()
				if err != nil {
					if !errdefs.IsDeadlineExceeded(err) {
						t.Errorf("Acquire: %v", err)
					}
					continue
				}
				if n := inside.Add(1); n > maxLimit {
					over.Store(n)
				}
				if (i+j)%16 == 0 {
					if err := s.Resize(1 + rand.IntN(maxLimit)); err != nil {
						t.Error(err)
					}
				}
				time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
				inside.Add(-1)
				sl.Release()
			}
		})
	}
	wg.Wait()
	if n := over.Load(); n != 0 {
		t.Errorf("%d holders at once, want at most %d", n, maxLimit)
	}
}

func TestCauseIsReported(t *testing.T) {
	s := mustNew(t, 1)
	held := acquire(t, s)
	defer held.Release()
	why := errors.New("client went away")
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(why)
	if _, err := s.Acquire(ctx); !errors.Is(err, why) || !errdefs.IsCanceled(err) {
		t.Errorf("got %v, want a canceled error carrying the cause", err)
	}
}
