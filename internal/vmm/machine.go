package vmm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	kabi "github.com/thawvm/thaw/internal/abi/kvm"
	"github.com/thawvm/thaw/internal/vmm/boot"
	"github.com/thawvm/thaw/internal/vmm/bus"
	"github.com/thawvm/thaw/internal/vmm/cpuid"
	"github.com/thawvm/thaw/internal/vmm/i8042"
	"github.com/thawvm/thaw/internal/vmm/kvm"
	"github.com/thawvm/thaw/internal/vmm/memory"
	"github.com/thawvm/thaw/internal/vmm/serial"
	"github.com/thawvm/thaw/internal/vmm/snapshot"
)

// Fixed machine layout: legacy ports and their GSIs (a PC's), and where
// KVM's private pages go (just below the IOAPIC, as Firecracker places them).
const (
	COM1Port = 0x3f8
	COM1IRQ  = 4
	I8042IRQ = 1
	tssAddr  = 0xfffbd000
)

// State is the machine's lifecycle state, spelled as Firecracker's
// InstanceInfo spells it.
type State string

// Machine states.
const (
	NotStarted State = "Not started"
	Running    State = "Running"
	Paused     State = "Paused"
	Stopped    State = "Stopped" // the guest ended or the VM failed
)

// Exit says why a machine stopped.
type Exit struct {
	// Reason is a short description: "guest reset through the i8042",
	// "triple fault on vcpu 0", ...
	Reason string
	// Err is set when the machine stopped because something failed (a KVM
	// internal error, an unexpected exit); nil for a guest-requested stop.
	Err error
}

func (e Exit) String() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %v", e.Reason, e.Err)
	}
	return e.Reason
}

// vcpu is one vCPU and the OS thread running it.
type vcpu struct {
	cpu *kvm.VCPU
	tid atomic.Int32 // the locked thread's id once its goroutine started
}

// Machine is one microVM. Its methods are safe for concurrent use.
type Machine struct {
	log   *slog.Logger
	debug bool // log at debug level: checked first on hot paths
	// shutdownDump is cfg.ShutdownDump, fixed at New so that vCPU threads
	// read it without mu.
	shutdownDump string

	// ctl serialises the lifecycle operations (Start, Pause, Resume,
	// Close), so that none sees another half done: Pause waits for the
	// vCPUs to park with mu released, and a Resume must not slip in.
	// Lock order: ctl, then mu.
	ctl sync.Mutex

	mu   sync.Mutex
	cond *sync.Cond // signalled on state, parked and exited changes; uses mu
	// The fields below are guarded by mu.
	cfg    Config
	state  State
	exit   *Exit // the first reason to stop, once there is one
	nvcpus int   // vCPU goroutines started
	parked int   // vCPUs waiting while Paused
	exited int   // vCPU goroutines that returned
	done   chan struct{}
	hw     *hardware

	// loaded is the restored guest memory (set by LoadSnapshot), for Kill,
	// which must reach it without mu.
	loaded atomic.Pointer[snapshot.Loaded]
}

// hardware is what Start builds. Its fields are set once, before the vCPU
// goroutines start, and read-only afterwards.
type hardware struct {
	sys    *kvm.System
	vm     *kvm.VM
	mem    *memory.Memory
	vcpus  []*vcpu
	pio    bus.Bus
	mmio   bus.Bus
	serial *serial.Serial
	i8042  *i8042.Device
	virtio []virtioDev
	// restored is set when the machine was loaded from a snapshot
	// (machine_snapshot.go); it owns mem then.
	restored *restored
}

// New returns an unstarted machine configured with cfg (which the API may
// still change before Start).
func New(cfg Config, log *slog.Logger) *Machine {
	m := &Machine{log: log, cfg: cfg, shutdownDump: cfg.ShutdownDump, state: NotStarted, done: make(chan struct{})}
	m.debug = log.Enabled(context.Background(), slog.LevelDebug)
	m.cond = sync.NewCond(&m.mu)
	return m
}

// State returns the lifecycle state.
func (m *Machine) State() State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state
}

// Config returns the configuration with defaults applied.
func (m *Machine) Config() Config {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cfg.withDefaults()
}

// Configure replaces the configuration; only before Start.
func (m *Machine) Configure(f func(*Config) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state != NotStarted {
		return fmt.Errorf("%w: the machine is %s; configuration is only possible before the instance starts", ErrState, m.state)
	}
	c := m.cfg
	if err := f(&c); err != nil {
		return err
	}
	m.cfg = c
	return nil
}

// ErrState is wrapped by errors from calls made in the wrong state.
var ErrState = errors.New("operation not allowed in this state")

// Start builds the VM (KVM objects, memory, devices), loads the kernel and
// starts the vCPUs.
func (m *Machine) Start(ctx context.Context) error {
	m.ctl.Lock()
	defer m.ctl.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state != NotStarted {
		return fmt.Errorf("%w: the machine is %s, not %s", ErrState, m.state, NotStarted)
	}
	cfg := m.cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid machine configuration: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	hw, err := m.build(cfg)
	if err != nil {
		return err
	}
	m.hw = hw
	m.nvcpus = len(hw.vcpus)
	m.state = Running
	for _, v := range hw.vcpus {
		go m.runVCPU(v)
	}
	m.log.Info("machine started", "vcpus", cfg.VCPUs, "mem_mib", cfg.MemMiB, "kernel", cfg.Kernel)
	return nil
}

// build creates the KVM VM and everything in it; on failure it releases
// what it created.
func (m *Machine) build(cfg Config) (_ *hardware, err error) {
	hw := &hardware{}
	defer func() {
		if err != nil {
			hw.close()
		}
	}()
	if hw.sys, err = kvm.Open(cfg.KVMPath); err != nil {
		return nil, err
	}
	if hw.vm, err = hw.sys.CreateVM(); err != nil {
		return nil, err
	}
	// Memory slots go in before the irqchip exists: with one, every slot
	// change waits for an SRCU grace period. Measured here: Start took
	// 5-7 ms with the slots added after the irqchip, 1 ms before it.
	if hw.mem, err = memory.New(cfg.MemMiB<<20, memory.Backing{}); err != nil {
		return nil, err
	}
	for i, r := range hw.mem.Regions() {
		if err = hw.vm.SetUserMemoryRegion(kabi.UserspaceMemoryRegion{
			Slot: uint32(i), GuestPhysAddr: r.GPA, MemorySize: r.Size, UserspaceAddr: r.HostAddr(),
		}); err != nil {
			return nil, err
		}
	}
	if err = hw.vm.SetTSSAddr(tssAddr); err != nil {
		return nil, err
	}
	if err = hw.vm.CreateIRQChip(); err != nil {
		return nil, err
	}
	if err = hw.vm.CreatePIT2(kabi.KVM_PIT_SPEAKER_DUMMY); err != nil {
		return nil, err
	}
	cmdline, err := m.addDevices(hw, cfg)
	if err != nil {
		return nil, err
	}
	entry, err := boot.Load(hw.mem, boot.Config{Kernel: cfg.Kernel, Initrd: cfg.Initrd, Cmdline: cmdline, VCPUs: cfg.VCPUs})
	if err != nil {
		return nil, err
	}

	hw.serial = serial.New(cfg.Serial, irqLine{hw.vm, COM1IRQ})
	if err = hw.pio.Add("serial", COM1Port, serial.Size, hw.serial); err != nil {
		return nil, err
	}
	hw.i8042 = i8042.New(irqLine{hw.vm, I8042IRQ}, func() {
		m.stop(Exit{Reason: "guest reset through the i8042"})
	})
	if err = hw.pio.Add("i8042", i8042.Base, i8042.Size, hw.i8042); err != nil {
		return nil, err
	}

	supported, err := hw.sys.SupportedCPUID()
	if err != nil {
		return nil, err
	}
	for i := range cfg.VCPUs {
		entries, err := cpuid.Normalize(supported, cpuid.Options{ID: i, Count: cfg.VCPUs, NoXSAVE: cfg.NoXSAVE})
		if err != nil {
			return nil, err
		}
		cpu, err := hw.vm.CreateVCPU(i)
		if err != nil {
			return nil, err
		}
		hw.vcpus = append(hw.vcpus, &vcpu{cpu: cpu})
		if err := boot.SetupVCPU(cpu, entry, entries, true); err != nil {
			return nil, fmt.Errorf("setting up vcpu %d: %w", i, err)
		}
	}
	return hw, nil
}

// close releases the hardware; no vCPU may be running.
func (hw *hardware) close() error {
	var errs []error
	if hw.serial != nil {
		if _, err := hw.serial.Flush(); err != nil {
			errs = append(errs, fmt.Errorf("flushing serial output: %w", err))
		}
	}
	// Devices stop first: their goroutines may still touch guest memory.
	errs = append(errs, hw.closeDevices())
	for _, v := range hw.vcpus {
		errs = append(errs, v.cpu.Close())
	}
	if hw.vm != nil {
		errs = append(errs, hw.vm.Close())
	}
	// Guest memory goes after the VM, which maps it.
	if hw.restored != nil {
		errs = append(errs, hw.restored.close())
	} else if hw.mem != nil {
		errs = append(errs, hw.mem.Close())
	}
	if hw.sys != nil {
		errs = append(errs, hw.sys.Close())
	}
	return errors.Join(errs...)
}

// kickLocked makes every vCPU leave KVM_RUN soon: immediate_exit stops a
// vCPU about to enter the guest, and a signal to its thread interrupts one
// inside it. SIGURG is the signal Go's runtime already uses to preempt
// goroutines, so its handler is installed and harmless.
func (m *Machine) kickLocked() {
	pid := unix.Getpid()
	for _, v := range m.hw.vcpus {
		v.cpu.SetImmediateExit(true)
		if tid := v.tid.Load(); tid != 0 {
			// ESRCH means the thread already exited: nothing to kick.
			_ = unix.Tgkill(pid, int(tid), unix.SIGURG)
		}
	}
}

// Pause stops every vCPU outside the guest and returns once all are
// parked; guest memory and device state then stay still until Resume.
func (m *Machine) Pause() error {
	m.ctl.Lock()
	defer m.ctl.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	switch m.state {
	case Paused:
		return nil
	case Running:
	default:
		return fmt.Errorf("%w: cannot pause a machine that is %s", ErrState, m.state)
	}
	m.state = Paused
	m.kickLocked()
	for m.parked+m.exited < m.nvcpus && m.state == Paused {
		m.cond.Wait()
	}
	if m.state != Paused {
		// Only stop changes the state under us (ctl excludes the rest).
		return fmt.Errorf("%w: the machine stopped while pausing: %s", ErrState, m.exit)
	}
	// Virtio devices keep serving their host side, as Firecracker's do
	// while paused: virtio.MMIO.Pause would also reset vsock's live
	// connections, which is what a snapshot wants, not a pause.
	return nil
}

// Resume restarts the vCPUs of a paused machine.
func (m *Machine) Resume() error {
	m.ctl.Lock()
	defer m.ctl.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	switch m.state {
	case Running:
		return nil
	case Paused:
	default:
		return fmt.Errorf("%w: cannot resume a machine that is %s", ErrState, m.state)
	}
	for _, v := range m.hw.vcpus {
		// Every vCPU is parked or gone (Pause waited; a loaded machine's
		// vCPUs never ran), so none is inside KVM_RUN.
		if err := wakeHaltedNoIRQ(v.cpu); err != nil {
			return err
		}
		v.cpu.SetImmediateExit(false)
	}
	m.state = Running
	m.cond.Broadcast()
	return nil
}

// rflagsIF is RFLAGS.IF, the interrupt enable flag.
const rflagsIF = 1 << 9

// wakeHaltedNoIRQ makes a vCPU that is halted with interrupts disabled
// runnable again, so that it continues after its HLT when resumed.
// Nothing else would ever wake it: only an NMI, SMI or INIT ends such a
// halt (Intel SDM vol. 2, HLT) and thaw-vmm sends none. To the guest it
// looks like an SMI whose handler did not restart the HLT, which every
// guest that halts in a loop tolerates. Guests halted with interrupts
// enabled (a Linux idle loop) are left alone: their timers wake them.
// This lets a guest without interrupts (the probe under PVM) idle at no
// host CPU cost and still answer a pause and resume.
func wakeHaltedNoIRQ(cpu *kvm.VCPU) error {
	st, err := cpu.MPState()
	if err != nil {
		return fmt.Errorf("vcpu %d: %w", cpu.ID(), err)
	}
	if st != kabi.KVM_MP_STATE_HALTED {
		return nil
	}
	r, err := cpu.Regs()
	if err != nil {
		return fmt.Errorf("vcpu %d: %w", cpu.ID(), err)
	}
	if r.RFLAGS&rflagsIF != 0 {
		return nil
	}
	if err := cpu.SetMPState(kabi.KVM_MP_STATE_RUNNABLE); err != nil {
		return fmt.Errorf("vcpu %d: %w", cpu.ID(), err)
	}
	return nil
}

// SendCtrlAltDel presses Ctrl+Alt+Del on the guest's keyboard; a Linux
// guest reboots, which ends the machine.
func (m *Machine) SendCtrlAltDel() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state != Running {
		return fmt.Errorf("%w: cannot send Ctrl+Alt+Del to a machine that is %s", ErrState, m.state)
	}
	return m.hw.i8042.SendCtrlAltDel()
}

// stop records why the machine ends (the first reason wins) and makes the
// vCPUs return.
func (m *Machine) stop(e Exit) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.exit != nil {
		return
	}
	m.exit = &e
	if m.state == NotStarted {
		m.state = Stopped
		close(m.done)
		return
	}
	m.state = Stopped
	m.kickLocked()
	m.cond.Broadcast()
	if e.Err != nil {
		m.log.Error("machine stopped", "reason", e.Reason, "err", e.Err)
	} else {
		m.log.Info("machine stopped", "reason", e.Reason)
	}
}

// Done is closed once the machine has stopped and all vCPU threads have
// returned.
func (m *Machine) Done() <-chan struct{} { return m.done }

// Wait blocks until the machine stops or ctx ends, and returns why it
// stopped.
func (m *Machine) Wait(ctx context.Context) (Exit, error) {
	select {
	case <-m.done:
	case <-ctx.Done():
		return Exit{}, ctx.Err()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return *m.exit, nil
}

// Kill stops the machine at once, even when its threads are blocked on
// guest memory that its page server will never serve: it records reason
// as the exit (unless the machine already stopped), kicks the vCPUs (a
// vCPU waiting for a page inside KVM_RUN returns on the signal: KVM's
// faults are interruptible) and, for memory restored with the Uffd
// backend, releases the VMM's copy of the userfaultfd
// (snapshot.Loaded.ReleaseUFFD), so that Go code blocked on a missing
// page wakes once the page server's copy is gone too. Guest memory is
// then garbage: Kill is for a VM being torn down. Close still has to be
// called to release the machine.
func (m *Machine) Kill(reason string) {
	m.stop(Exit{Reason: reason})
	if l := m.loaded.Load(); l != nil {
		if err := l.ReleaseUFFD(); err != nil {
			m.log.Warn("releasing the userfaultfd", "err", err)
		}
	}
	// Kick again: a vCPU that was waiting for a page when stop kicked it
	// may have lost that signal to the fault's retry, and runs on once
	// its page arrives (as zeros, after the release). While a vCPU has
	// not returned, Close has not started to release the hardware.
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.hw != nil && m.exited < m.nvcpus {
		m.kickLocked()
	}
}

// Close stops the machine if it runs, waits for its vCPU threads and
// releases everything it holds. The hardware is closed without mu held,
// so that a Kill can still reach the machine while a device goroutine
// that Close waits for is blocked on guest memory.
func (m *Machine) Close() error {
	m.ctl.Lock()
	defer m.ctl.Unlock()
	m.stop(Exit{Reason: "the VMM closed the machine"})
	<-m.done
	m.mu.Lock()
	hw := m.hw
	m.mu.Unlock()
	if hw == nil {
		return nil
	}
	// Every vCPU has returned and the state is Stopped, so no method
	// touches hw any more (they check the state first).
	err := hw.close()
	m.mu.Lock()
	m.hw = nil
	m.mu.Unlock()
	return err
}

// SerialInput queues bytes for the guest to read from its serial console
// (the VMM's stdin, as in Firecracker). Input before Start or after the
// machine stopped is refused.
func (m *Machine) SerialInput(p []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state != Running && m.state != Paused {
		return fmt.Errorf("%w: serial input to a machine that is %s", ErrState, m.state)
	}
	m.hw.serial.Enqueue(p)
	return nil
}

// invariants reports the first broken invariant of the machine's state,
// for tests to check in cleanup.
func (m *Machine) invariants() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.nvcpus
	switch {
	case m.state != NotStarted && m.state != Running && m.state != Paused && m.state != Stopped:
		return fmt.Errorf("unknown state %q", m.state)
	case m.state == Stopped && m.exit == nil:
		return errors.New("stopped without an exit reason")
	case m.state != Stopped && m.exit != nil:
		return fmt.Errorf("state %s with an exit reason (%s)", m.state, m.exit)
	case (m.state == Running || m.state == Paused) && m.hw == nil:
		return fmt.Errorf("state %s without hardware", m.state)
	case m.parked < 0 || m.exited < 0 || m.parked+m.exited > n:
		return fmt.Errorf("%d parked + %d exited vCPUs of %d", m.parked, m.exited, n)
	}
	select {
	case <-m.done:
		if m.exited != n {
			return fmt.Errorf("done with %d of %d vCPU threads exited", m.exited, n)
		}
	default:
	}
	return nil
}
