package phases

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeClock advances by a fixed step per reading, so durations are exact.
func fakeClock(step time.Duration) func() time.Time {
	t := time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)
	return func() time.Time { t = t.Add(step); return t }
}

// TestRollbackUndoesInReverse uses real files: each phase creates one, a
// later phase fails, and rollback must leave the directory as it found it.
func TestRollbackUndoesInReverse(t *testing.T) {
	dir := t.TempDir()
	r := New(0)
	r.now = fakeClock(time.Millisecond)
	var order []string
	create := func(name string) func(context.Context) (Undo, error) {
		return func(context.Context) (Undo, error) {
			p := filepath.Join(dir, name)
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				return nil, err
			}
			return func(context.Context) error { order = append(order, name); return os.Remove(p) }, nil
		}
	}
	ctx := context.Background()
	for _, name := range []string{"slot", "dir", "disk"} {
		if err := r.Do(ctx, name, create(name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Do(ctx, "noundo", func(context.Context) (Undo, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("vmm exited with status 1")
	err := r.Do(ctx, "shim", func(context.Context) (Undo, error) {
		// Half-succeeded: a socket file exists and must go too.
		p := filepath.Join(dir, "shim.sock")
		os.WriteFile(p, nil, 0o600)
		return func(context.Context) error { order = append(order, "shim"); return os.Remove(p) }, boom
	})
	if !errors.Is(err, boom) || !strings.HasPrefix(err.Error(), "shim: ") {
		t.Fatalf("Do = %v, want boom wrapped with the phase name", err)
	}
	if err := r.Rollback(ctx); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	if want := []string{"shim", "disk", "dir", "slot"}; !slices.Equal(order, want) {
		t.Errorf("undo order = %q, want %q", order, want)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("after rollback the directory holds %d entries, want none", len(ents))
	}
	var names []string
	for _, p := range r.Phases() {
		names = append(names, p.Name)
		if p.Duration != time.Millisecond {
			t.Errorf("phase %s took %v, want exactly 1ms on the fake clock", p.Name, p.Duration)
		}
	}
	if want := []string{"slot", "dir", "disk", "noundo", "shim"}; !slices.Equal(names, want) {
		t.Errorf("phases = %q, want %q (the failed phase is timed too)", names, want)
	}
	order = nil
	if err := r.Rollback(ctx); err != nil || len(order) != 0 {
		t.Errorf("second Rollback ran %q, %v; want nothing", order, err)
	}
}

func TestRollbackRunsEveryUndoAndJoinsErrors(t *testing.T) {
	r := New(0)
	ran := 0
	fail := func(msg string) func(context.Context) (Undo, error) {
		return func(context.Context) (Undo, error) {
			return func(context.Context) error { ran++; return errors.New(msg) }, nil
		}
	}
	r.Do(context.Background(), "a", fail("rm a"))
	r.Do(context.Background(), "b", fail("rm b"))
	err := r.Rollback(context.Background())
	if ran != 2 {
		t.Errorf("%d undos ran, want 2 (a failing undo must not stop the rest)", ran)
	}
	for _, want := range []string{"undoing a: rm a", "undoing b: rm b"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Rollback error %v lacks %q", err, want)
		}
	}
}

// TestRollbackOutlivesTheCaller: a create whose client hung up still cleans
// up, with a live context bounded by the undo timeout.
func TestRollbackOutlivesTheCaller(t *testing.T) {
	r := New(time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	var undoCtxErr error
	var deadline time.Time
	r.Do(ctx, "dir", func(context.Context) (Undo, error) {
		return func(uctx context.Context) error {
			undoCtxErr = uctx.Err()
			deadline, _ = uctx.Deadline()
			return nil
		}, nil
	})
	cancel()
	if err := r.Do(ctx, "shim", func(context.Context) (Undo, error) {
		t.Error("a phase ran after its context was canceled")
		return nil, nil
	}); !errors.Is(err, context.Canceled) {
		t.Errorf("Do after cancel = %v, want canceled", err)
	}
	if err := r.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if undoCtxErr != nil {
		t.Errorf("undo got a done context (%v), want a live one", undoCtxErr)
	}
	if left := time.Until(deadline); left <= 0 || left > time.Minute {
		t.Errorf("undo deadline in %v, want within the 1m undo timeout", left)
	}
}

func TestCommitDropsUndos(t *testing.T) {
	r := New(0)
	r.Do(context.Background(), "dir", func(context.Context) (Undo, error) {
		return func(context.Context) error { t.Error("undo ran after Commit"); return nil }, nil
	})
	r.Commit()
	if err := r.Rollback(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(r.Phases()) != 1 {
		t.Errorf("Commit dropped the timings too")
	}
}
