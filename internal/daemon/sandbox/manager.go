// Package sandbox is thawd's sandbox lifecycle: create (restore a template
// build under a fresh thaw-shim, in the order of DESIGN.md "Restore (sandbox
// create), in order"), delete, pause and resume, and the reconciler that
// re-attaches to shims after a thawd restart and keeps records and shims in
// agreement while thawd runs.
//
// The Manager holds no per-sandbox process state: the store's record (shim
// pid, start time and control socket) is the truth, and every operation on
// a running sandbox attaches to its shim through the control socket. That is
// what makes a thawd restart invisible to sandboxes: there is nothing to
// rebuild but the records, which are on disk.
//
// Operations on one sandbox are serialised by a busy set: a second
// operation on a sandbox that has one in flight is refused ("failed
// precondition"), and the reconciler leaves busy sandboxes alone.
package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/thawvm/thaw/internal/daemon/layout"
	"github.com/thawvm/thaw/internal/daemon/live"
	"github.com/thawvm/thaw/internal/daemon/proc"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/shim"
)

// Observer receives the outcome of every create (internal/daemon/metrics'
// Metrics implements it).
type Observer interface {
	ObserveCreate(backend string, phases []store.Phase, err error)
}

// Options configure a Manager. Store, Layout, Settings, Shim and VMM are
// required; zero durations take the defaults in brackets.
type Options struct {
	Store    *store.Store
	Layout   layout.Layout
	Settings *live.Settings
	// Observer, if set, is told about every create.
	Observer Observer
	Logger   *slog.Logger
	// Shim is the absolute path of thaw-shim. VMM is shim.BuiltinVMM (the
	// VMM inside thaw-shim: one process per sandbox) or the absolute path
	// of a VMM binary the shim runs as its child (thaw-vmm or
	// firecracker).
	Shim, VMM string
	// Prefetch turns the page server's ordered prefetch on; off also
	// turns template recording runs off (RecordFunc returns nil).
	Prefetch bool
	// PrefetchRate caps each new sandbox's prefetch in bytes per second
	// (0: unlimited); the shim keeps it for the sandbox's life.
	PrefetchRate uint64
	// RecordMax bounds a recording run's wait for the settle detector
	// [10s].
	RecordMax time.Duration
	// LoadTimeout bounds PUT /snapshot/load [30s].
	LoadTimeout time.Duration
	// ReadyTimeout bounds the wait for the handshake verdict and the
	// ready check after the load [30s].
	ReadyTimeout time.Duration
	// StopGrace is how long a stopping VMM gets between SIGTERM and
	// SIGKILL [2s].
	StopGrace time.Duration
	// CreatingGrace is how old a creating record may be before a periodic
	// reconciler pass treats it as abandoned [LoadTimeout+ReadyTimeout+1m].
	CreatingGrace time.Duration
	// MaxActions caps destructive reconciler actions per pass (0: report
	// only).
	MaxActions int
}

// Manager runs sandbox operations. It is safe for concurrent use.
type Manager struct {
	opts Options
	log  *slog.Logger

	mu sync.Mutex
	// busy holds the ids with an operation in flight; guarded by mu.
	busy map[string]string
}

// New returns a Manager for opts.
func New(opts Options) (*Manager, error) {
	if opts.Store == nil || opts.Settings == nil || opts.Layout.Root() == "" {
		return nil, errdefs.InvalidArgument("sandbox manager: Store, Layout and Settings are required")
	}
	bins := []struct{ what, path string }{{"shim", opts.Shim}}
	if opts.VMM != shim.BuiltinVMM {
		bins = append(bins, struct{ what, path string }{"vmm", opts.VMM})
	}
	for _, b := range bins {
		if !filepath.IsAbs(b.path) {
			return nil, errdefs.InvalidArgument("sandbox manager: %s binary %q: want an absolute path", b.what, b.path)
		}
		if fi, err := os.Stat(b.path); err != nil {
			return nil, errdefs.InvalidArgument("sandbox manager: %s binary: %v", b.what, err)
		} else if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			return nil, errdefs.InvalidArgument("sandbox manager: %s binary %s is not an executable file", b.what, b.path)
		}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&opts.LoadTimeout, 30*time.Second)
	def(&opts.ReadyTimeout, 30*time.Second)
	def(&opts.StopGrace, 2*time.Second)
	def(&opts.RecordMax, 10*time.Second)
	def(&opts.CreatingGrace, opts.LoadTimeout+opts.ReadyTimeout+time.Minute)
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Manager{opts: opts, log: opts.Logger, busy: map[string]string{}}, nil
}

// claim marks id busy with op, or says which operation already holds it.
func (m *Manager) claim(id, op string) (release func(), err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if other, ok := m.busy[id]; ok {
		return nil, errdefs.FailedPrecondition("sandbox %q: a %s is in progress; retry when it has finished", id, other)
	}
	m.busy[id] = op
	return func() {
		m.mu.Lock()
		delete(m.busy, id)
		m.mu.Unlock()
	}, nil
}

// isBusy reports whether id has an operation in flight.
func (m *Manager) isBusy(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.busy[id]
	return ok
}

// newID returns a fresh sandbox id.
func newID() string {
	var b [6]byte
	rand.Read(b[:])
	return "sb-" + hex.EncodeToString(b[:])
}

// attach connects to the shim a record names.
func attach(ctx context.Context, sh store.Shim) (*shim.Handle, error) {
	if sh.ControlSocket == "" {
		return nil, errdefs.FailedPrecondition("no shim is recorded")
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	h, err := shim.Attach(ctx, sh.ControlSocket)
	if err != nil {
		return nil, errdefs.Mark(err, errdefs.ErrUnavailable)
	}
	if h.PID != sh.PID {
		h.Close()
		return nil, errdefs.Unavailable("shim on %s is pid %d, the record says %d", sh.ControlSocket, h.PID, sh.PID)
	}
	return h, nil
}

// stopShim stops the VMM under h, collects the shim's final status and
// waits for the shim to exit. It closes h.
func (m *Manager) stopShim(ctx context.Context, h *shim.Handle) (shim.Status, error) {
	defer h.Close()
	st, err := h.Stop(ctx, m.opts.StopGrace)
	if err != nil {
		// The shim may already be gone (it exits on its own after a
		// collect timeout or a SIGTERM): that is stopped enough.
		if gone(ctx, h) {
			return st, nil
		}
		return st, fmt.Errorf("stopping shim %d: %w", h.PID, err)
	}
	if st, err = h.Finish(ctx); err != nil {
		if gone(ctx, h) {
			return st, nil
		}
		return st, fmt.Errorf("collecting shim %d: %w", h.PID, err)
	}
	return st, nil
}

// gone is a last, short check that a shim which did not answer has exited.
func gone(ctx context.Context, h *shim.Handle) bool {
	c, cancel := context.WithTimeout(context.WithoutCancel(ctx), 500*time.Millisecond)
	defer cancel()
	return h.WaitExit(c) == nil
}

// killShim is the last resort for a shim whose control socket does not
// answer: SIGKILL by pid, only if pid and start time still match. Its VMM
// dies with it (PDEATHSIG).
func killShim(sh store.Shim) error {
	if sh.PID <= 0 {
		return nil
	}
	alive, err := proc.Alive(sh.PID, sh.StartTime)
	if err != nil || !alive {
		return err
	}
	p, err := os.FindProcess(sh.PID)
	if err != nil {
		return err
	}
	if err := p.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing shim %d: %w", sh.PID, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if alive, _ := proc.Alive(sh.PID, sh.StartTime); !alive {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("shim %d still alive 5s after SIGKILL", sh.PID)
}
