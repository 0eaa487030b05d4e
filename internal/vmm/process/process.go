// Package process runs one VMM instance: a vmm.Machine behind its
// Firecracker API server on a unix socket, until the guest ends, the VM
// fails, the API server fails (a failed snapshot load, as in Firecracker)
// or the instance is told to stop. It is what a VMM process does, as a
// value: cmd/thaw-vmm runs one per process, and thaw-shim runs one inside
// itself (the builtin VMM, one process per sandbox) through the same code.
//
// Stop is the SIGTERM of a VMM process: the API stops taking requests,
// answers in flight get a moment (api.Server's shutdown grace), and the
// machine is closed. Kill is the SIGKILL: the machine stops at once
// (vmm.Machine.Kill), even with vCPUs or device goroutines blocked on guest
// memory nobody serves, and the API is shut down without waiting.
package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"

	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/vmm"
	"github.com/thawvm/thaw/internal/vmm/api"
)

// The environment variables a VMM process reads (parsed by the commands,
// passed in Config).
const (
	// XSAVEEnv, set to false, hides XSAVE and AVX from the guest: needed
	// where KVM cannot track the guest's XCR0 (KVM nested under QEMU TCG,
	// whose emulated SVM does not intercept XSETBV), and harmless
	// elsewhere but slower.
	XSAVEEnv = "THAW_VMM_XSAVE"
	// ShutdownDumpEnv names a file to write guest memory to (raw, the
	// memory file's format) when the guest triple-faults: to read the
	// guest's page tables and IDT as they were when it died.
	ShutdownDumpEnv = "THAW_VMM_SHUTDOWN_DUMP"
)

// Version is the VMM version GET / reports.
const Version = "0.1.0"

// StartProcs is the GOMAXPROCS an instance that sizes it (Config.MaxProcs)
// runs with until its VM is known: the API and a snapshot load need no
// more, and each P costs memory (its caches and the threads that come
// with it), which adds up with many VMs (docs/benchmarks/thawd.md).
const StartProcs = 2

// Config is one instance's configuration.
type Config struct {
	// APISocket is the unix socket the API is served on. It must not
	// exist (it may be another VMM's live socket); the instance removes it
	// when it ends. Empty serves no API: Boot must then be set.
	APISocket string
	// ID is the instance id GET / reports ["anonymous-instance"].
	ID string
	// Boot, when set, configures and starts the machine before the API
	// serves (Firecracker's --config-file).
	Boot *fcapi.VMConfig
	// Serial receives the guest's serial console [discarded].
	Serial io.Writer
	// NoXSAVE hides XSAVE and AVX from the guest (XSAVEEnv).
	NoXSAVE bool
	// ShutdownDump is ShutdownDumpEnv's file ("" writes none).
	ShutdownDump string
	// MaxProcs, when positive, makes the instance size the process's
	// GOMAXPROCS to its VM once the VM is started or loaded: one P per
	// vCPU to handle their exits in Go plus one for the devices and the
	// API, at least StartProcs and never more than MaxProcs (pass the
	// runtime's default, the host's CPUs). 0 leaves GOMAXPROCS alone (it
	// is set in the environment).
	MaxProcs int
}

// Validate reports what is wrong with c.
func (c Config) Validate() error {
	if c.APISocket == "" && c.Boot == nil {
		return errors.New("a VMM instance without an API socket needs a boot configuration (--config-file)")
	}
	if c.MaxProcs < 0 {
		return fmt.Errorf("max procs %d: want 0 (leave GOMAXPROCS alone) or the host's CPU count", c.MaxProcs)
	}
	return nil
}

// End says how an instance ended.
type End struct {
	// Err is nil when the guest shut down or reset, or the instance was
	// stopped or killed; else what failed (the VM, a snapshot load, the
	// API server). A VMM process exits 0 for a nil Err and 1 otherwise.
	Err error
	// Killed is set when Kill was called before the instance had ended:
	// it ended it, or cut short a stop or the guest's own end that was
	// still under way (as SIGKILL does to a process that is exiting).
	Killed bool
	// Stopped is set when Stop ended it.
	Stopped bool
}

// Instance is one running VMM. Its methods are safe for concurrent use.
type Instance struct {
	cfg Config
	log *slog.Logger
	m   *vmm.Machine
	srv *api.Server

	stopOnce, killOnce sync.Once
	stopCh, killCh     chan struct{}
	done               chan struct{} // closed once end is set and everything is released

	mu  sync.Mutex
	end End // guarded by mu; final once done is closed
}

// Start binds the API socket, starts the machine when cfg.Boot says so,
// and runs the instance until it ends (see Done and Wait). An error means
// nothing was started and nothing is left (the socket included).
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*Instance, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	serial := cfg.Serial
	if serial == nil {
		serial = io.Discard
	}
	in := &Instance{
		cfg: cfg, log: log,
		stopCh: make(chan struct{}), killCh: make(chan struct{}), done: make(chan struct{}),
	}
	in.m = vmm.New(vmm.Config{Serial: serial, NoXSAVE: cfg.NoXSAVE, ShutdownDump: cfg.ShutdownDump}, log)
	var mach api.Machine = in.m
	if cfg.MaxProcs > 0 {
		runtime.GOMAXPROCS(min(cfg.MaxProcs, StartProcs))
		mach = procsMachine{Machine: in.m, ceiling: cfg.MaxProcs}
	}
	in.srv = api.NewServer(mach, fcapi.InstanceInfo{ID: cfg.ID, VMMVersion: Version}, log)

	var l net.Listener
	if cfg.APISocket != "" {
		var err error
		if l, err = listen(cfg.APISocket); err != nil {
			in.m.Close()
			return nil, err
		}
	}
	if cfg.Boot != nil {
		if err := in.srv.StartFromConfig(ctx, cfg.Boot); err != nil {
			if l != nil {
				l.Close()
				os.Remove(cfg.APISocket)
			}
			in.m.Close()
			return nil, err
		}
	}
	if l != nil {
		log.Info("API server listening", "socket", cfg.APISocket)
	}
	go in.run(l)
	return in, nil
}

// listen binds the API socket. An existing file at the path is an error,
// not something to delete: it may be another VMM's live socket.
func listen(path string) (net.Listener, error) {
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("API socket %s already exists: remove it if no VMM is using it", path)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("API socket: %w", err)
	}
	// The instance removes the path itself, once, when it ends.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	return l, nil
}

// run serves the API and waits for the end, then releases everything.
func (in *Instance) run(l net.Listener) {
	serveCtx, cancelServe := context.WithCancel(context.Background())
	defer cancelServe()
	served := make(chan error, 1)
	if l != nil {
		go func() { served <- in.srv.Serve(serveCtx, l) }()
	} else {
		served = nil
	}

	var end End
	select {
	case <-in.m.Done():
		e, _ := in.m.Wait(context.Background())
		if e.Err != nil {
			end.Err = fmt.Errorf("%s: %w", e.Reason, e.Err)
		}
	case err := <-served:
		// Serve returns early only for a failed snapshot load or a broken
		// listener: both end the VMM, as in Firecracker.
		served = nil
		end.Err = err
	case <-in.stopCh:
		in.log.Info("stopping")
		end.Stopped = true
	case <-in.killCh:
		end.Killed = true
	}
	cancelServe()
	if served != nil {
		waitServed(served, in.killCh, &end)
	}
	if err := in.m.Close(); err != nil {
		in.log.Error("closing the machine", "err", err)
	}
	if l != nil {
		os.Remove(in.cfg.APISocket)
	}
	select {
	case <-in.killCh:
		end.Killed = true
	default:
	}
	in.mu.Lock()
	in.end = end
	in.mu.Unlock()
	close(in.done)
}

// waitServed waits for the API server to finish its answers in flight,
// or only until a Kill.
func waitServed(served <-chan error, kill <-chan struct{}, end *End) {
	select {
	case err := <-served:
		if err != nil && end.Err == nil && !end.Killed {
			end.Err = err
		}
	case <-kill:
		// Requests in flight see their context cancelled and a stopped
		// machine; their goroutines end on their own.
	}
}

// Machine is the instance's machine (for serial input).
func (in *Instance) Machine() *vmm.Machine { return in.m }

// Stop ends the instance as SIGTERM ends a VMM process: the API finishes
// its answers in flight and the machine is closed. It does not wait: see
// Done.
func (in *Instance) Stop() { in.stopOnce.Do(func() { close(in.stopCh) }) }

// Kill ends the instance at once (vmm.Machine.Kill), as SIGKILL ends a
// VMM process. It does not wait: see Done. A Kill after Stop hurries the
// stop along.
func (in *Instance) Kill() {
	in.killOnce.Do(func() {
		close(in.killCh)
		// The run loop may be busy closing the machine after a Stop or
		// the guest's end; the kick and the userfaultfd release must
		// reach it anyway. From a goroutine, because a snapshot load in
		// flight holds the machine until the API server's stop (which
		// killCh brings) cancels it, and Kill must not wait.
		go in.m.Kill("the VMM was killed")
	})
}

// Done is closed once the instance has ended and released everything:
// the machine, its memory and the API socket.
func (in *Instance) Done() <-chan struct{} { return in.done }

// Wait blocks until the instance has ended or ctx ends, and returns how
// it ended.
func (in *Instance) Wait(ctx context.Context) (End, error) {
	select {
	case <-in.done:
	case <-ctx.Done():
		return End{}, ctx.Err()
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.end, nil
}
