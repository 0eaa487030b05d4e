package shim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/uffd"
)

// supervisor is the running shim: it owns the VMM child, the page server
// and the control server.
type supervisor struct {
	cfg     Config
	log     *slog.Logger
	builtin Builtin // starts the builtin VMM (Config.VMM BuiltinVMM)
	// pg is nil in pages none; set under mu before the VMM starts, fixed
	// after.
	pg *pager

	// pagesWG counts the page-server goroutine; reap waits for it before
	// publishing Done, so that a finished status includes a complete
	// recording and final stats.
	pagesWG     sync.WaitGroup
	pagesCtx    context.Context
	cancelPages context.CancelFunc

	vmmExited chan struct{} // closed when the VMM has been reaped
	done      chan struct{} // closed when Status.Done is set
	collected chan struct{} // closed when thawd has collected the status

	mu sync.Mutex
	// Guarded by mu.
	st        Status
	changed   chan struct{} // closed and replaced on every change of st
	vmm       vmmProc       // the VMM, once started
	reaped    bool          // the VMM has been released: its pid may be reused
	srv       *uffd.Server
	killTimer *time.Timer
	killAt    time.Time
}

// Run is the shim: it binds the control socket, prepares the page server
// and binds its socket, starts the VMM, waits for its API, serves pages and
// supervises until thawd collects the final status, the collect timeout
// passes after the VMM is gone, or ctx ends (the shim was told to leave:
// it stops the VMM with the grace period first). Failures of the VM are
// recorded in its status, not returned; Run returns an error only when the
// shim cannot work at all (invalid configuration, control socket in use).
// builtin starts the builtin VMM when cfg.VMM is BuiltinVMM; it may be
// nil otherwise.
func Run(ctx context.Context, cfg Config, log *slog.Logger, builtin Builtin) error {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.VMM == BuiltinVMM && builtin == nil {
		return errors.New("vmm builtin: this shim has no builtin VMM; give the path of a VMM binary")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &supervisor{
		cfg:       cfg,
		builtin:   builtin,
		log:       log.With("vm", cfg.ID),
		vmmExited: make(chan struct{}),
		done:      make(chan struct{}),
		collected: make(chan struct{}),
		changed:   make(chan struct{}),
	}
	s.pagesCtx, s.cancelPages = context.WithCancel(context.Background())
	defer s.cancelPages()
	s.st = Status{ID: cfg.ID, State: StateStarting, ShimPID: os.Getpid(), Handshake: Verdict{State: VerdictPending}, Updated: time.Now()}
	if cfg.Pages == PagesNone {
		s.st.Handshake.State = VerdictNone
	}
	if cfg.Pages == PagesRecord {
		s.st.Settle = &SettleStatus{}
	}

	ctl, err := listenControl(cfg)
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: s.routes(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		hs.Serve(ctl)
	}()
	defer func() {
		// Every blocking call has an answer by now (the VMM is gone, or
		// the shim is leaving); give them a moment to be written.
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if hs.Shutdown(sctx) != nil {
			hs.Close()
		}
		<-served
	}()
	s.update(func(*Status) {}) // the first status file, naming our pid

	if cfg.Pages != PagesNone {
		pg, err := openPager(cfg, s.log)
		if err != nil {
			s.finishWithoutVMM(fmt.Sprintf("preparing the page server: %v", err))
			return s.linger(ctx)
		}
		s.mu.Lock() // status readers look at the recorder
		s.pg = pg
		s.mu.Unlock()
		defer func() {
			// Normally reap has done this; not when the VMM outlived
			// even SIGKILL. The page server must stop before its memory
			// file is unmapped.
			s.cancelPages()
			s.pagesWG.Wait()
			s.pg.close()
		}()
	}
	if err := s.startVMM(); err != nil {
		s.finishWithoutVMM(err.Error())
		return s.linger(ctx)
	}
	go s.reap()

	if s.waitReady(ctx) && s.pg != nil {
		s.mu.Lock()
		if !s.reaped {
			s.pagesWG.Add(1)
			go func() {
				defer s.pagesWG.Done()
				s.servePages(s.pagesCtx, s.pg)
			}()
		}
		s.mu.Unlock()
	}
	return s.linger(ctx)
}

// linger waits for the end: thawd collecting the status, the collect
// timeout after the VMM is gone, or ctx ending.
func (s *supervisor) linger(ctx context.Context) error {
	var timeout <-chan time.Time
	doneCh := s.done
	for {
		select {
		case <-s.collected:
			if err := os.Remove(s.cfg.StatusFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
				s.log.Warn("removing the status file", "err", err)
			}
			s.log.Info("status collected, exiting")
			return nil
		case <-doneCh:
			doneCh = nil
			timeout = time.After(s.cfg.CollectTimeout)
		case <-timeout:
			s.log.Warn("nobody collected the final status; exiting and leaving it in the status file", "after", s.cfg.CollectTimeout)
			return nil
		case <-ctx.Done():
			s.log.Info("shim told to leave: stopping the VMM", "grace", s.cfg.StopGrace)
			s.stop(s.cfg.StopGrace)
			select {
			case <-s.done:
			case <-time.After(s.cfg.StopGrace + 5*time.Second):
				s.log.Error("the VMM did not go away after SIGKILL")
			}
			return nil
		}
	}
}

// listenControl binds the control socket, refusing when another shim
// answers on it and removing a stale one left by a shim that was killed.
func listenControl(cfg Config) (*net.UnixListener, error) {
	path := cfg.ControlSocket()
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another shim is serving %s: stop it first", path)
	}
	for _, name := range []string{ControlSocketName, APISocketName, UFFDSocketName} {
		if err := removeSocket(cfg.socket(name), nil); err != nil {
			return nil, fmt.Errorf("removing stale socket: %w", err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on the control socket: %w", err)
	}
	// Stopping VMs is for thawd (the shim's user), nobody else.
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restricting the control socket: %w", err)
	}
	return l, nil
}

// startVMM starts the VMM, with its output in the VMM log: a child
// process (startChild), or the builtin VMM in this process.
func (s *supervisor) startVMM() error {
	out, err := os.OpenFile(s.cfg.VMMLog(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("opening the VMM log: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.st.Stopped {
		out.Close()
		return errors.New("stopped before the VMM started")
	}
	var v vmmProc
	if s.cfg.VMM == BuiltinVMM {
		b, err := startBuiltin(s.cfg, s.builtin, out, s.log)
		if err != nil {
			out.Close()
			return err
		}
		v = b // it keeps out
	} else {
		c, err := startChild(s.cfg, out, s.log)
		out.Close() // the child has its own copy
		if err != nil {
			return err
		}
		v = c
	}
	s.vmm = v
	s.updateLocked(func(st *Status) { st.VMMPID = v.pid() })
	s.log.Info("VMM started", "pid", v.pid(), "vmm", s.cfg.VMM)
	return nil
}

// waitReady waits for the VMM's API to answer GET / and reports whether
// it did; when it did not (and the VMM is still there), the VM fails.
func (s *supervisor) waitReady(ctx context.Context) bool {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.ReadyTimeout)
	defer cancel()
	go func() {
		select {
		case <-s.vmmExited:
			cancel()
		case <-rctx.Done():
		}
	}()
	c := fcapi.NewClient(s.cfg.APISocket())
	defer c.Close()
	err := c.WaitReady(rctx)
	switch {
	case err == nil:
		s.update(func(st *Status) {
			if st.State == StateStarting {
				st.State = StateRunning
			}
		})
		s.log.Info("VMM API ready")
		return true
	case ctx.Err() != nil:
		return false // the shim is leaving
	}
	select {
	case <-s.vmmExited:
		return false // reap recorded how
	default:
	}
	s.fail(fmt.Sprintf("the VMM's API on %s did not answer within %v: %v", s.cfg.APISocket(), s.cfg.ReadyTimeout, err))
	return false
}

// reap waits for the VMM to exit, releases it (kills whatever it left in
// its process group, reaps it), waits for the page server to stop, and
// publishes the final status.
func (s *supervisor) reap() {
	s.vmm.wait()
	s.mu.Lock()
	exit, err := s.vmm.release()
	if err != nil {
		s.log.Error("releasing the VMM", "err", err)
	}
	s.reaped = true
	if s.killTimer != nil {
		s.killTimer.Stop()
	}
	pid := s.vmm.pid()
	s.mu.Unlock()
	close(s.vmmExited)
	s.log.Info("VMM exited", "pid", pid, "status", exit.String())
	// A VMM that was killed (or a firecracker that exits) leaves its API
	// socket behind; nothing can answer on it any more.
	removeSocket(s.cfg.APISocket(), s.log)

	s.cancelPages()
	s.pagesWG.Wait()
	var recErr error
	if s.pg != nil {
		recErr = s.pg.close()
	}
	s.update(func(st *Status) {
		st.Exit = exit
		if st.State != StateFailed {
			st.State = StateVMMExited
		}
		if st.Handshake.State == VerdictPending {
			st.Handshake = Verdict{State: VerdictFailed, Reason: fmt.Sprintf("the VMM %s before sending its UFFD handshake", exit)}
		}
		if recErr != nil && st.Settle != nil {
			st.Settle.Error = recErr.Error()
		}
		st.Done = true
	})
	close(s.done)
}

// finishWithoutVMM records that the VM failed before a VMM ran.
func (s *supervisor) finishWithoutVMM(reason string) {
	s.log.Error("VM failed before the VMM ran", "reason", reason)
	s.update(func(st *Status) {
		st.State, st.Reason, st.Done = StateFailed, reason, true
		if st.Handshake.State == VerdictPending {
			st.Handshake = Verdict{State: VerdictFailed, Reason: "no VMM ran: " + reason}
		}
	})
	close(s.vmmExited)
	close(s.done)
}

// fail records that the VM failed and kills the VMM (fate-sharing).
func (s *supervisor) fail(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.st.Done || s.st.State == StateFailed {
		return
	}
	s.log.Error("VM failed: killing the VMM", "reason", reason)
	s.updateLocked(func(st *Status) { st.State, st.Reason = StateFailed, reason })
	s.signalLocked(unix.SIGKILL)
}

// stop asks the VMM to exit with SIGTERM and kills it after grace. A later
// stop with a shorter grace brings the SIGKILL forward.
func (s *supervisor) stop(grace time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.st.Stopped {
		s.updateLocked(func(st *Status) { st.Stopped = true })
	}
	if s.vmm == nil || s.reaped {
		return
	}
	at := time.Now().Add(grace)
	if s.killTimer != nil && !at.Before(s.killAt) {
		return
	}
	if s.killTimer == nil {
		s.log.Info("stopping the VMM", "grace", grace)
		s.signalLocked(unix.SIGTERM)
		s.killTimer = time.AfterFunc(grace, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.log.Warn("the VMM outlived its grace period: SIGKILL")
			s.signalLocked(unix.SIGKILL)
		})
	} else {
		s.killTimer.Reset(grace)
	}
	s.killAt = at
}

// signalLocked signals the VMM (a child's whole process group), if it
// has not been released (until then a child's pid cannot name another
// process).
func (s *supervisor) signalLocked(sig unix.Signal) {
	if s.vmm == nil || s.reaped {
		return
	}
	if err := s.vmm.signal(sig); err != nil {
		s.log.Error("signalling the VMM", "signal", signalName(sig), "err", err)
	}
}

func (s *supervisor) setVerdict(v Verdict) {
	s.update(func(st *Status) { st.Handshake = v })
}

func (s *supervisor) setServer(srv *uffd.Server, v Verdict) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.srv = srv
	s.updateLocked(func(st *Status) { st.Handshake = v })
}

// update changes the status, wakes every waiter and rewrites the status
// file.
func (s *supervisor) update(fn func(*Status)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.updateLocked(fn)
}

func (s *supervisor) updateLocked(fn func(*Status)) {
	if s.st.Settle != nil {
		c := *s.st.Settle // waiters hold copies of the old pointer
		s.st.Settle = &c
	}
	fn(&s.st)
	s.st.Updated = time.Now()
	close(s.changed)
	s.changed = make(chan struct{})
	if err := s.st.Check(); err != nil {
		s.log.Error("status invariant broken", "err", err, "status", s.st)
	}
	if err := writeStatusFile(s.cfg.StatusFile(), s.snapshotLocked()); err != nil {
		s.log.Error("writing the status file", "err", err)
	}
}

// snapshotLocked returns a copy of the status with the live counters.
func (s *supervisor) snapshotLocked() Status {
	st := s.st
	if st.Settle != nil {
		c := *st.Settle
		if s.pg != nil && s.pg.rec != nil {
			c.Pages = s.pg.rec.Count()
		}
		st.Settle = &c
	}
	return st
}

func (s *supervisor) status() (Status, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snapshotLocked(), s.changed
}

// waitFor blocks until cond holds for the status or ctx ends.
func (s *supervisor) waitFor(ctx context.Context, cond func(*Status) bool) (Status, error) {
	for {
		st, changed := s.status()
		if cond(&st) {
			return st, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return st, ctx.Err()
		}
	}
}

func (s *supervisor) stats() PageStats {
	s.mu.Lock()
	srv, pg := s.srv, s.pg
	s.mu.Unlock()
	if srv == nil {
		return PageStats{}
	}
	ps := PageStats{Serving: true, Prefetch: PrefetchOff, Stats: srv.Stats()}
	switch {
	case !s.cfg.Prefetch || s.cfg.Pages == PagesRecord:
	case pg != nil && pg.order != nil:
		ps.Prefetch, ps.OrderPages = PrefetchOrdered, len(pg.order.Offsets)
	default:
		ps.Prefetch = PrefetchFileOrder
	}
	return ps
}

func waitStatus(ps *os.ProcessState) (syscall.WaitStatus, bool) {
	if ps == nil {
		return 0, false
	}
	ws, ok := ps.Sys().(syscall.WaitStatus)
	return ws, ok
}

// removeSocket removes path if it is a unix socket (never anything else
// that happens to have the name), logging a failure when log is set.
func removeSocket(path string, log *slog.Logger) error {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Type() != os.ModeSocket {
		return nil
	}
	err = os.Remove(path)
	if err != nil && log != nil {
		log.Warn("removing a socket", "path", path, "err", err)
	}
	return err
}
