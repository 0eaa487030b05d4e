// Package phases runs a multi-step daemon operation (a sandbox create, a
// template build) as named, timed phases, each of which may register how to
// undo what it did. If a phase fails, Rollback undoes the finished ones in
// reverse order, so that a failed create leaves no process, socket,
// directory or record behind (DESIGN.md, "Restore (sandbox create), in
// order", step 6); the recorded timings become the per-phase breakdown that
// inspect shows.
package phases

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/thawvm/thaw/internal/daemon/store"
)

// Undo reverses what a phase did. It gets a context that is not canceled
// when the operation's context is (a client that hung up must not stop the
// cleanup), bounded by the Run's undo timeout.
type Undo func(ctx context.Context) error

// Run is one operation in progress. It is not safe for concurrent use: an
// operation's phases run one after another.
type Run struct {
	now         func() time.Time
	undoTimeout time.Duration
	phases      []store.Phase
	undos       []namedUndo
}

type namedUndo struct {
	phase string
	undo  Undo
}

// DefaultUndoTimeout bounds a rollback when New is given zero.
const DefaultUndoTimeout = 30 * time.Second

// New starts an operation. undoTimeout bounds the whole rollback (zero
// means DefaultUndoTimeout).
func New(undoTimeout time.Duration) *Run {
	if undoTimeout <= 0 {
		undoTimeout = DefaultUndoTimeout
	}
	return &Run{now: time.Now, undoTimeout: undoTimeout}
}

// Do runs the phase called name and records how long it took, whether or
// not it succeeded. If do returns a non-nil Undo, it joins the rollback even
// when do also returns an error (a phase that half-succeeded knows best what
// to remove). A context that is already done fails the phase without running
// it. The error is wrapped with the phase's name.
func (r *Run) Do(ctx context.Context, name string, do func(ctx context.Context) (Undo, error)) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", name, context.Cause(ctx))
	}
	start := r.now()
	undo, err := do(ctx)
	r.phases = append(r.phases, store.Phase{Name: name, Duration: r.now().Sub(start)})
	if undo != nil {
		r.undos = append(r.undos, namedUndo{name, undo})
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// Phases returns the timings recorded so far, in order.
func (r *Run) Phases() []store.Phase { return append([]store.Phase(nil), r.phases...) }

// Commit ends the operation successfully: the undos are dropped, so a later
// Rollback does nothing.
func (r *Run) Commit() { r.undos = nil }

// Rollback undoes every phase that registered an Undo, newest first, and
// returns all their errors joined (each naming its phase). Every undo runs
// even if an earlier one failed. ctx's values are kept but not its
// cancellation. Rolling back twice does nothing the second time.
func (r *Run) Rollback(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.undoTimeout)
	defer cancel()
	var errs []error
	for i := len(r.undos) - 1; i >= 0; i-- {
		u := r.undos[i]
		if err := u.undo(ctx); err != nil {
			errs = append(errs, fmt.Errorf("undoing %s: %w", u.phase, err))
		}
	}
	r.undos = nil
	return errors.Join(errs...)
}
