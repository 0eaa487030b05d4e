package shim

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// BuiltinVMM is Config.VMM for the builtin VMM: thaw-vmm's code running
// inside the shim's own process (Builtin), so that a sandbox costs one Go
// runtime, not two (docs/benchmarks/thawd.md). Any other VMM is a binary
// the shim starts as a child process.
const BuiltinVMM = "builtin"

// Builtin starts a VMM inside the shim's process: it serves the
// Firecracker API on cfg.APISocket (which must not exist) and runs the
// machine thawd configures or loads through it, writing the serial
// console and its log to cfg.Output. cmd/thaw-shim supplies one built on
// internal/vmm/process; internal/shim itself never imports internal/vmm,
// so that the supervisor and thawd's side of it stay VMM-agnostic and a
// firecracker binary remains a drop-in. An error means nothing was
// started and nothing is left.
type Builtin func(cfg BuiltinConfig) (BuiltinInstance, error)

// BuiltinConfig is what the shim tells its builtin VMM.
type BuiltinConfig struct {
	// ID is the VMM's instance id (Config.VMMID; "" for the default).
	ID string
	// APISocket is the Firecracker API socket (Config.APISocket).
	APISocket string
	// Output receives the serial console and the VMM's log (the VMM log
	// file); it stays open until the instance is done.
	Output io.Writer
}

// BuiltinInstance is a running builtin VMM.
type BuiltinInstance interface {
	// Stop ends it as SIGTERM ends a VMM process; Kill ends it at once,
	// as SIGKILL does, even when its threads wait for guest memory that
	// will not be served. Neither waits.
	Stop()
	Kill()
	// Done is closed once it has ended and released everything (the
	// machine, guest memory, the API socket).
	Done() <-chan struct{}
	// End says how it ended, once Done is closed: err is nil for a guest
	// that shut down and for a stop or kill, and killed is set when Kill
	// ended it.
	End() (killed bool, err error)
}

// vmmProc is the VMM a supervisor drives: a child process (childVMM) or
// the builtin VMM (builtinVMM). The supervisor calls signal and release
// with its mutex held, never signal after release.
type vmmProc interface {
	// pid is the VMM's process id (the shim's own for the builtin VMM).
	pid() int
	// signal asks the VMM to stop (SIGTERM) or ends it at once (SIGKILL).
	signal(sig unix.Signal) error
	// wait blocks until the VMM has ended; a child stays a zombie, so its
	// pid names it until release.
	wait()
	// release frees what is left of the ended VMM (a child: whatever it
	// left in its process group, and the zombie) and says how it ended.
	release() (*ExitStatus, error)
}

// startChild starts the VMM binary cfg.VMM in its own process group, with
// its output on out. It dies with the shim (PDEATHSIG): a VMM whose page
// server is gone would freeze on its next fault.
func startChild(cfg Config, out *os.File, log *slog.Logger) (*childVMM, error) {
	args := []string{"--api-sock", cfg.APISocket()}
	if cfg.VMMID != "" {
		args = append(args, "--id", cfg.VMMID)
	}
	cmd := exec.Command(cfg.VMM, append(args, cfg.VMMArgs...)...)
	cmd.Dir = cfg.Dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if cfg.Procs != 0 {
		// The shim's GOMAXPROCS is its own --procs (shimEnv), not a
		// setting for a VMM binary, which sizes itself.
		cmd.Env = withoutGOMAXPROCS(os.Environ())
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the VMM: %w", err)
	}
	return &childVMM{cmd: cmd, log: log}, nil
}

// childVMM is a VMM binary running as the shim's child.
type childVMM struct {
	cmd *exec.Cmd
	log *slog.Logger
}

func (c *childVMM) pid() int { return c.cmd.Process.Pid }

// signal signals the VMM's process group: the VMM has not been reaped
// (release), so its pid cannot name another process.
func (c *childVMM) signal(sig unix.Signal) error {
	if err := unix.Kill(-c.pid(), sig); err != nil && err != unix.ESRCH {
		return err
	}
	return nil
}

func (c *childVMM) wait() {
	var info unix.Siginfo
	for {
		// WNOWAIT leaves the zombie, so the pid (and its process group
		// id) cannot be reused before release kills the group.
		err := unix.Waitid(unix.P_PID, c.pid(), &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			if err != nil {
				c.log.Error("waiting for the VMM", "err", err)
			}
			return
		}
	}
}

func (c *childVMM) release() (*ExitStatus, error) {
	unix.Kill(-c.pid(), unix.SIGKILL)
	werr := c.cmd.Wait()
	if ws, ok := waitStatus(c.cmd.ProcessState); ok {
		return exitStatusOf(ws), nil
	}
	return &ExitStatus{Code: -1}, fmt.Errorf("reaping the VMM: %w", werr)
}

// builtinVMM is the builtin VMM, running in the shim's process. Its
// ExitStatus is the one a thaw-vmm process would have had: 0 when the
// guest ended or it was stopped, 1 when the VM failed, killed by SIGKILL
// when Kill ended it.
type builtinVMM struct {
	in  BuiltinInstance
	out *os.File // the VMM log, closed by release
	log *slog.Logger
}

// startBuiltin starts the builtin VMM with its output on out, which it
// keeps (and closes) on success.
func startBuiltin(cfg Config, start Builtin, out *os.File, log *slog.Logger) (*builtinVMM, error) {
	if start == nil {
		return nil, errors.New("starting the VMM: this shim has no builtin VMM (its command did not supply one); give a VMM binary")
	}
	in, err := start(BuiltinConfig{ID: cfg.VMMID, APISocket: cfg.APISocket(), Output: out})
	if err != nil {
		return nil, fmt.Errorf("starting the builtin VMM: %w", err)
	}
	return &builtinVMM{in: in, out: out, log: log}, nil
}

func (b *builtinVMM) pid() int { return os.Getpid() }

func (b *builtinVMM) signal(sig unix.Signal) error {
	switch sig {
	case unix.SIGTERM:
		b.in.Stop()
	case unix.SIGKILL:
		b.in.Kill()
	default:
		return fmt.Errorf("signal %s: the builtin VMM takes SIGTERM (stop) or SIGKILL (kill)", signalName(sig))
	}
	return nil
}

func (b *builtinVMM) wait() { <-b.in.Done() }

func (b *builtinVMM) release() (*ExitStatus, error) {
	killed, err := b.in.End()
	var exit *ExitStatus
	switch {
	case killed:
		exit = &ExitStatus{Signal: int(unix.SIGKILL), SignalName: signalName(unix.SIGKILL)}
	case err != nil:
		exit = &ExitStatus{Code: 1}
	default:
		exit = &ExitStatus{Code: 0}
	}
	if err != nil {
		// What a thaw-vmm process prints before it exits 1.
		fmt.Fprintf(b.out, "thaw-vmm: %v\n", err)
		b.log.Error("the builtin VMM failed", "err", err)
	}
	if cerr := b.out.Close(); cerr != nil && err == nil {
		return exit, fmt.Errorf("closing the VMM log: %w", cerr)
	}
	return exit, nil
}
