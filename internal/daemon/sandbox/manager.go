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
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/thawvm/thaw/internal/daemon/layout"
	"github.com/thawvm/thaw/internal/daemon/live"
	"github.com/thawvm/thaw/internal/daemon/proc"
	"github.com/thawvm/thaw/internal/daemon/reconcile"
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
	// ShimProcs is every shim's GOMAXPROCS (shim.Config.Procs): 0
	// sizes it automatically, N fixes it. A shim keeps it for its life.
	ShimProcs int
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
	// UnresponsiveLimit is how long a running sandbox's shim may be alive
	// without answering its control socket, in every reconciler pass,
	// before the reconciler fails the sandbox and stops the shim [5m].
	UnresponsiveLimit time.Duration
}

// Manager runs sandbox operations. It is safe for concurrent use.
type Manager struct {
	opts Options
	log  *slog.Logger

	mu sync.Mutex
	// busy holds the ids with an operation in flight; guarded by mu.
	busy map[string]string
	// silent holds, per sandbox, the recorded shim that was alive but did
	// not answer in the last reconciler pass, and since when it has not
	// answered in any pass; guarded by mu.
	silent map[string]reconcile.Silent
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
	def(&opts.UnresponsiveLimit, 5*time.Minute)
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Manager{opts: opts, log: opts.Logger, busy: map[string]string{}, silent: map[string]reconcile.Silent{}}, nil
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
// answer (a dead socket, or a wedged shim): SIGKILL to its process group
// (it leads one: thawd starts it in its own session), only if pid and start
// time still match, then to the process group of each child it had (its
// VMM, which also gets SIGKILL from PDEATHSIG when the shim dies). It waits
// until the shim is gone.
func killShim(sh store.Shim) error {
	if sh.PID <= 0 {
		return nil
	}
	st, err := proc.ReadStat(sh.PID)
	if errors.Is(err, proc.ErrGone) || err == nil && (st.StartTime != sh.StartTime || st.State == 'Z' || st.State == 'X') {
		return nil // gone, or its pid is another process's now
	}
	if err != nil {
		return err
	}
	children := childrenOf(sh.PID)
	target := sh.PID
	if st.PGID == sh.PID {
		target = -sh.PID // the whole group
	}
	if err := syscall.Kill(target, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("killing shim %d: %w", sh.PID, err)
	}
	for _, c := range children {
		// Only a child that is still the same process, and leads its own
		// group (the shim puts its VMM in one), is killed by group.
		if cs, err := proc.ReadStat(c.PID); err == nil && cs.StartTime == c.StartTime {
			if cs.PGID == c.PID {
				syscall.Kill(-c.PID, syscall.SIGKILL)
			} else {
				syscall.Kill(c.PID, syscall.SIGKILL)
			}
		}
	}
	// SIGKILL takes effect asynchronously (a VMM with a large memory
	// takes a while to tear down): wait for the shim and its children.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var left []int
		for _, p := range append([]proc.Stat{{PID: sh.PID, StartTime: sh.StartTime}}, children...) {
			if alive, _ := proc.Alive(p.PID, p.StartTime); alive {
				left = append(left, p.PID)
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("shim %d: processes %v still alive 5s after SIGKILL", sh.PID, left)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// childrenOf lists the live children of pid, read from /proc.
func childrenOf(pid int) []proc.Stat {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []proc.Stat
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := proc.ReadStat(n); err == nil && st.PPID == pid && st.State != 'Z' {
			out = append(out, st)
		}
	}
	return out
}
