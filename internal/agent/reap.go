package agent

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// child is a process the agent started. done closes once it has been reaped;
// status is valid after that.
type child struct {
	pid    int
	done   chan struct{}
	status unix.WaitStatus
}

// reaper collects the exit statuses of the processes the agent starts.
//
// Normally each started process is waited for through a pidfd (CLONE_PIDFD
// at fork), which closing can interrupt, so Close never hangs on a detached
// process. As PID 1 (or a child subreaper) the agent must also reap orphans it
// never started, which means wait4(-1): the reaper then reaps everything on
// SIGCHLD and hands the statuses of known pids to their children. Fork and
// registration happen under mu, which the SIGCHLD loop also takes, so a
// process that exits at once is never reaped before it is registered.
type reaper struct {
	all bool

	mu      sync.Mutex
	waiting map[int]*child        // guarded by mu; reap-all mode only
	pidfds  map[*os.File]struct{} // guarded by mu; per-pid mode only
	closed  bool                  // guarded by mu

	sigc chan os.Signal
	stop chan struct{}
	wg   sync.WaitGroup
}

func newReaper(all bool) *reaper {
	r := &reaper{
		all:     all,
		waiting: make(map[int]*child),
		pidfds:  make(map[*os.File]struct{}),
		stop:    make(chan struct{}),
	}
	if all {
		r.sigc = make(chan os.Signal, 1)
		signal.Notify(r.sigc, syscall.SIGCHLD)
		r.wg.Add(1)
		go r.loop()
		r.sigc <- syscall.SIGCHLD // reap whatever exited before we started
	}
	return r
}

// forkFunc forks a process; with pidfd non-nil it must ask the kernel for a
// pidfd there (syscall.SysProcAttr.PidFD).
type forkFunc func(pidfd *int) (pid int, err error)

// start runs fork and returns the started child.
func (r *reaper) start(fork forkFunc) (*child, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, errors.New("the agent is shutting down")
	}
	if r.all {
		pid, err := fork(nil)
		if err != nil {
			return nil, err
		}
		c := &child{pid: pid, done: make(chan struct{})}
		r.waiting[pid] = c
		return c, nil
	}
	pidfd := -1
	pid, err := fork(&pidfd)
	if err != nil {
		return nil, err
	}
	if pidfd < 0 {
		// Kernels before 5.3 have no CLONE_PIDFD; we need 5.10+ anyway.
		unix.Kill(pid, unix.SIGKILL)
		unix.Wait4(pid, nil, 0, nil)
		return nil, errors.New("the kernel returned no pidfd (CLONE_PIDFD needs Linux 5.3 or newer)")
	}
	// Non-blocking before os.NewFile, so the runtime poller watches it.
	if err := unix.SetNonblock(pidfd, true); err != nil {
		unix.Close(pidfd)
		unix.Kill(pid, unix.SIGKILL)
		unix.Wait4(pid, nil, 0, nil)
		return nil, fmt.Errorf("making pidfd non-blocking: %w", err)
	}
	f := os.NewFile(uintptr(pidfd), fmt.Sprintf("pidfd:%d", pid))
	r.pidfds[f] = struct{}{}
	c := &child{pid: pid, done: make(chan struct{})}
	r.wg.Add(1)
	go r.waitPidfd(c, f)
	return c, nil
}

// waitPidfd waits until the pidfd turns readable (the process exited), then
// reaps the process. Closing f (reaper.close) abandons the wait.
func (r *reaper) waitPidfd(c *child, f *os.File) {
	defer r.wg.Done()
	defer func() {
		r.mu.Lock()
		delete(r.pidfds, f)
		r.mu.Unlock()
		f.Close()
	}()
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	var si unix.Siginfo
	var werr error
	err = rc.Read(func(fd uintptr) bool {
		werr = unix.Waitid(unix.P_PIDFD, int(fd), &si, unix.WEXITED|unix.WNOHANG, nil)
		if errors.Is(werr, unix.EINTR) {
			return false
		}
		return werr != nil || siginfoPid(&si) != 0
	})
	if err != nil || werr != nil {
		return // closed by reaper.close, or the child is gone
	}
	c.status = siginfoStatus(&si)
	close(c.done)
}

func (r *reaper) loop() {
	defer r.wg.Done()
	for {
		select {
		case <-r.stop:
			return
		case <-r.sigc:
		}
		r.reapExited()
	}
}

// reapExited reaps every exited child, taking mu so that start's
// fork-and-register is atomic with respect to it.
func (r *reaper) reapExited() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return // ECHILD: no children; 0: none exited yet
		}
		if c, ok := r.waiting[pid]; ok {
			delete(r.waiting, pid)
			c.status = ws
			close(c.done)
		}
	}
}

// close stops reaping: it stops the SIGCHLD loop, abandons pidfd waits and
// waits for its goroutines. Children that are still running are not touched;
// their done channels never close.
func (r *reaper) close() {
	r.mu.Lock()
	r.closed = true
	for f := range r.pidfds {
		f.Close()
	}
	r.mu.Unlock()
	if r.all {
		signal.Stop(r.sigc)
	}
	close(r.stop)
	r.wg.Wait()
}
