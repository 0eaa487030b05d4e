package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Handle is thawd's side of one running shim: its control client plus
// what identifies the process. Closing a Handle does not stop the shim.
type Handle struct {
	*Client
	ID  string
	PID int
	// Dir is the VM directory; APISocket and UFFDSocket are the sockets
	// thawd points the VMM's API calls and a Uffd snapshot load at.
	Dir        string
	APISocket  string
	UFFDSocket string

	exited chan struct{} // Start: closed once the shim has been reaped
	pidfd  *os.File      // Attach: readable once the shim has exited
}

// StartError is returned by Start when the VM ended before its VMM's API
// answered: the VMM exited at start, could not be started, or never
// answered. The shim has been collected (it is gone, with its sockets).
type StartError struct {
	Status Status
	// VMMLog is the end of the VMM's output, which usually says why.
	VMMLog string
}

func (e *StartError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "VM %s did not start: ", e.Status.ID)
	switch {
	case e.Status.State == StateFailed:
		b.WriteString(e.Status.Reason)
		if e.Status.Exit != nil {
			fmt.Fprintf(&b, " (the VMM %s)", e.Status.Exit)
		}
	case e.Status.Exit != nil:
		fmt.Fprintf(&b, "the VMM %s before its API answered", e.Status.Exit)
	default:
		fmt.Fprintf(&b, "state %s", e.Status.State)
	}
	if e.VMMLog != "" {
		fmt.Fprintf(&b, "; VMM output ends: %q", e.VMMLog)
	}
	return b.String()
}

// shimEnv is the shim's environment: env, with GOMAXPROCS=procs when
// procs is set. The Go runtime sizes its Ps from GOMAXPROCS before main
// runs, and memory a P's caches took at start-up stays resident when
// main lowers GOMAXPROCS later, so the shim's --procs alone would not
// save it (docs/benchmarks/thawd.md).
func shimEnv(env []string, procs int) []string {
	if procs == 0 {
		return env
	}
	return append(withoutGOMAXPROCS(env), "GOMAXPROCS="+strconv.Itoa(procs))
}

// withoutGOMAXPROCS returns env without its GOMAXPROCS entries.
func withoutGOMAXPROCS(env []string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, "GOMAXPROCS=") {
			out = append(out, kv)
		}
	}
	return out
}

// vmmLogTail is how much of the VMM's output a StartError carries.
const vmmLogTail = 1024

// Start launches the shim binary (thaw-shim, an absolute path) for cfg in
// a new session, detached from the caller's stdio (its output goes to
// ShimLog), so it outlives thawd. It waits until the shim's control socket
// answers and the VMM's API is ready, and returns the handle. If the VM
// ends before that, Start collects the shim and returns a *StartError; if
// ctx ends first, it kills the shim (and so its VMM) and removes its
// sockets. Either way nothing is left running.
func Start(ctx context.Context, binary string, cfg Config) (*Handle, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("starting shim: %w", err)
	}
	if !filepath.IsAbs(binary) {
		return nil, fmt.Errorf("starting shim: binary %q: want an absolute path to thaw-shim", binary)
	}
	if fi, err := os.Stat(cfg.Dir); err != nil {
		return nil, fmt.Errorf("starting shim: VM directory: %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("starting shim: VM directory %s is not a directory", cfg.Dir)
	}
	probe := NewClient(cfg.ControlSocket())
	other, err := probe.Info(ctx)
	probe.Close()
	if err == nil {
		return nil, fmt.Errorf("starting shim: another shim (pid %d, VM %s) is serving %s: stop it first", other.ShimPID, other.ID, cfg.Dir)
	}
	logf, err := os.OpenFile(cfg.ShimLog(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("starting shim: opening its log: %w", err)
	}
	cmd := exec.Command(binary, cfg.Args()...)
	cmd.Dir = cfg.Dir
	cmd.Env = shimEnv(os.Environ(), cfg.Procs)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A new session: no controlling terminal, and signals to thawd's
	// process group (Ctrl-C, a service manager stopping thawd) miss it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return nil, fmt.Errorf("starting shim %s: %w", binary, err)
	}
	h := &Handle{
		Client: NewClient(cfg.ControlSocket()), ID: cfg.ID, PID: cmd.Process.Pid,
		Dir: cfg.Dir, APISocket: cfg.APISocket(), exited: make(chan struct{}),
	}
	if cfg.Pages != PagesNone {
		h.UFFDSocket = cfg.UFFDSocket()
	}
	// thawd is the shim's parent until thawd exits: reap it whenever it
	// ends so that it never lingers as a zombie.
	go func() {
		cmd.Wait()
		close(h.exited)
	}()
	if err := h.waitUp(ctx, cfg); err != nil {
		h.abandon(cfg)
		return nil, err
	}
	st, err := h.Ready(ctx)
	if err != nil {
		h.abandon(cfg)
		return nil, fmt.Errorf("starting shim: waiting for the VMM's API: %w", err)
	}
	if st.State == StateRunning {
		return h, nil
	}
	// The VM is over before it began: take the final status and let the
	// shim go.
	if st, err = h.Wait(ctx); err == nil {
		st, err = h.Collect(ctx)
	}
	if err == nil {
		err = h.WaitExit(ctx)
	}
	if err != nil {
		h.abandon(cfg)
		return nil, fmt.Errorf("starting shim: collecting a VM that ended at start (%s): %w", st.State, err)
	}
	h.Close()
	return nil, &StartError{Status: st, VMMLog: tail(cfg.VMMLog(), vmmLogTail)}
}

// waitUp polls the control socket until the shim answers, exits or ctx
// ends.
func (h *Handle) waitUp(ctx context.Context, cfg Config) error {
	delay := time.Millisecond
	for {
		info, err := h.Info(ctx)
		if err == nil {
			if info.ShimPID != h.PID {
				return fmt.Errorf("starting shim: %s is answered by pid %d, not the shim just started (%d)", h.SocketPath(), info.ShimPID, h.PID)
			}
			return nil
		}
		t := time.NewTimer(delay)
		select {
		case <-h.exited:
			t.Stop()
			why := tail(cfg.ShimLog(), vmmLogTail)
			if st, serr := ReadStatusFile(cfg.Dir); serr == nil && st.ShimPID == h.PID && st.Reason != "" {
				why = st.Reason
			}
			return fmt.Errorf("starting shim: it exited before answering on %s: %s", h.SocketPath(), why)
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("starting shim: waiting for its control socket %s: %w (last error: %v)", h.SocketPath(), ctx.Err(), err)
		case <-t.C:
		}
		delay = min(2*delay, 20*time.Millisecond)
	}
}

// abandon kills a shim that Start cannot hand over (its VMM dies with it)
// and removes the sockets it could not remove itself.
func (h *Handle) abandon(cfg Config) {
	select {
	case <-h.exited:
		// It left on its own and removed its sockets; any there now
		// belong to another shim (one already serving this directory).
		h.Close()
		return
	default:
	}
	unix.Kill(h.PID, unix.SIGKILL) // our child until reaped: the pid is ours
	<-h.exited
	h.Close()
	if c, err := net.DialTimeout("unix", cfg.ControlSocket(), time.Second); err == nil {
		c.Close() // another shim's: leave its sockets alone
		return
	}
	for _, name := range []string{ControlSocketName, APISocketName, UFFDSocketName} {
		removeSocket(cfg.socket(name), nil)
	}
	// The status file still says the shim runs; the caller has the error.
	if st, err := ReadStatusFile(cfg.Dir); err == nil && st.ShimPID == h.PID {
		os.Remove(cfg.StatusFile())
	}
}

// Attach connects to a running shim after a thawd restart: it checks that
// the shim answers on socketPath and holds a pidfd for it, so that
// WaitExit works although the shim is not thawd's child any more.
func Attach(ctx context.Context, socketPath string) (*Handle, error) {
	c := NewClient(socketPath)
	info, err := c.Info(ctx)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("attaching to shim: %w", err)
	}
	pidfd, err := unix.PidfdOpen(info.ShimPID, 0)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("attaching to shim %d: pidfd_open: %w", info.ShimPID, err)
	}
	h := &Handle{Client: c, ID: info.ID, PID: info.ShimPID, Dir: info.Dir, APISocket: info.APISocket, UFFDSocket: info.UFFDSocket,
		pidfd: os.NewFile(uintptr(pidfd), "pidfd")}
	// The pid could have been reused between the answer and pidfd_open; a
	// second answer naming it proves the pidfd is the shim's.
	if again, err := c.Info(ctx); err != nil || again.ShimPID != info.ShimPID {
		h.Close()
		return nil, fmt.Errorf("attaching to shim %d on %s: it went away while attaching", info.ShimPID, socketPath)
	}
	return h, nil
}

// WaitExit blocks until the shim process has exited (and, for a shim this
// process started, been reaped) or ctx ends.
func (h *Handle) WaitExit(ctx context.Context) error {
	if h.exited != nil {
		select {
		case <-h.exited:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("waiting for shim %d to exit: %w", h.PID, ctx.Err())
		}
	}
	if h.pidfd == nil {
		return errors.New("waiting for shim: handle is closed")
	}
	rc, err := h.pidfd.SyscallConn()
	if err != nil {
		return fmt.Errorf("waiting for shim %d: %w", h.PID, err)
	}
	for {
		var n int
		var perr error
		if err := rc.Control(func(fd uintptr) {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, perr = unix.Poll(fds, 50)
		}); err != nil {
			return fmt.Errorf("waiting for shim %d: %w", h.PID, err)
		}
		if perr != nil && perr != unix.EINTR {
			return fmt.Errorf("waiting for shim %d: poll: %w", h.PID, perr)
		}
		if n > 0 {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for shim %d to exit: %w", h.PID, ctx.Err())
		}
	}
}

// Finish collects the final status (the VMM must be gone: see Stop and
// Wait) and waits for the shim to exit.
func (h *Handle) Finish(ctx context.Context) (Status, error) {
	st, err := h.Collect(ctx)
	if err != nil {
		return st, err
	}
	return st, h.WaitExit(ctx)
}

// Close releases the handle's connections and pidfd; the shim runs on.
func (h *Handle) Close() error {
	h.Client.Close()
	if h.pidfd != nil {
		err := h.pidfd.Close()
		h.pidfd = nil
		return err
	}
	return nil
}

// tail returns the last n bytes of the file at path, trimmed ("" when it
// cannot be read).
func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		f.Seek(fi.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(io.LimitReader(f, n))
	return strings.TrimSpace(string(b))
}
