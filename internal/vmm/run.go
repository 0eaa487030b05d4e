package vmm

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"

	kabi "github.com/thawvm/thaw/internal/abi/kvm"
	"github.com/thawvm/thaw/internal/vmm/kvm"
	"github.com/thawvm/thaw/internal/vmm/snapshot"
)

// runVCPU is the body of a vCPU's goroutine. It locks itself to an OS
// thread for good: KVM expects KVM_RUN from one thread, and the thread id
// is where kicks are sent. The goroutine returns when the machine stops.
func (m *Machine) runVCPU(v *vcpu) {
	runtime.LockOSThread()
	v.tid.Store(int32(unix.Gettid()))
	// Name the thread as Firecracker names its vCPU threads, so that top,
	// perf and thawd's benchmarks (which split a VMM's CPU time into
	// vCPU and VMM threads) see the same names with either VMM. The
	// thread is never handed back to the runtime (no UnlockOSThread), so
	// the name cannot leak to other goroutines. A failure only costs the
	// name.
	_ = os.WriteFile("/proc/thread-self/comm", []byte(fmt.Sprintf("fc_vcpu %d", v.cpu.ID())), 0)
	defer func() {
		m.mu.Lock()
		m.exited++
		if m.exited == m.nvcpus {
			close(m.done)
		}
		m.cond.Broadcast()
		m.mu.Unlock()
	}()
	for m.waitRunnable() {
		reason, err := v.cpu.Run()
		if errors.Is(err, kvm.ErrInterrupted) {
			continue
		}
		if err != nil {
			m.stop(Exit{Reason: fmt.Sprintf("vcpu %d failed", v.cpu.ID()), Err: err})
			return
		}
		if e, stop := m.handleExit(v, reason); stop {
			m.stop(e)
			return
		}
	}
}

// waitRunnable parks the calling vCPU while the machine is paused and
// reports whether it should keep running.
func (m *Machine) waitRunnable() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for m.state == Paused {
		m.parked++
		m.cond.Broadcast()
		m.cond.Wait()
		m.parked--
	}
	return m.state == Running
}

// handleExit serves one exit and reports whether (and why) the machine
// must stop. A guest can end the machine only through defined paths
// (reset, shutdown); anything else it does to unclaimed addresses is
// absorbed, so a guest cannot crash or hang the VMM.
func (m *Machine) handleExit(v *vcpu, reason uint32) (Exit, bool) {
	hw := m.hw
	id := v.cpu.ID()
	switch reason {
	case kabi.KVM_EXIT_IO:
		port, out, size, data, err := v.cpu.IO()
		if err != nil {
			return Exit{Reason: fmt.Sprintf("bad I/O exit on vcpu %d", id), Err: err}, true
		}
		for off := 0; off+size <= len(data); off += size {
			chunk := data[off : off+size]
			var ok bool
			if out {
				ok = hw.pio.Write(uint64(port), chunk)
			} else {
				ok = hw.pio.Read(uint64(port), chunk)
			}
			if !ok && m.debug {
				m.log.Debug("unclaimed port access", "port", port, "out", out, "size", size)
			}
		}
		return Exit{}, false
	case kabi.KVM_EXIT_MMIO:
		addr, write, data := v.cpu.MMIO()
		var ok bool
		if write {
			ok = hw.mmio.Write(addr, data)
		} else {
			ok = hw.mmio.Read(addr, data)
		}
		if !ok && m.debug {
			m.log.Debug("unclaimed MMIO access", "addr", addr, "write", write, "len", len(data))
		}
		return Exit{}, false
	case kabi.KVM_EXIT_INTR:
		return Exit{}, false
	case kabi.KVM_EXIT_HLT:
		// Only reached without an in-kernel local APIC; with one, KVM
		// waits for an interrupt itself.
		return Exit{Reason: fmt.Sprintf("vcpu %d halted", id)}, true
	case kabi.KVM_EXIT_SHUTDOWN:
		e := Exit{Reason: fmt.Sprintf("triple fault (guest shutdown) on vcpu %d%s", id, shutdownState(v.cpu))}
		if path := m.shutdownDump; path != "" {
			if err := snapshot.WriteMemory(path, hw.mem); err != nil {
				e.Reason += "; dumping guest memory: " + err.Error()
			} else {
				e.Reason += "; guest memory dumped to " + path
			}
		}
		return e, true
	case kabi.KVM_EXIT_SYSTEM_EVENT:
		ev := v.cpu.SystemEvent()
		switch ev.Type {
		case kabi.KVM_SYSTEM_EVENT_SHUTDOWN:
			return Exit{Reason: "guest shut down"}, true
		case kabi.KVM_SYSTEM_EVENT_RESET:
			return Exit{Reason: "guest reset"}, true
		case kabi.KVM_SYSTEM_EVENT_CRASH:
			return Exit{Reason: "guest crashed", Err: fmt.Errorf("KVM_SYSTEM_EVENT_CRASH on vcpu %d", id)}, true
		}
		return Exit{Reason: "unknown system event", Err: fmt.Errorf("KVM system event type %d on vcpu %d", ev.Type, id)}, true
	case kabi.KVM_EXIT_INTERNAL_ERROR:
		ie := v.cpu.InternalError()
		n := min(int(ie.NData), len(ie.Data))
		return Exit{Reason: fmt.Sprintf("KVM internal error on vcpu %d", id),
			Err: fmt.Errorf("suberror %d (%s), data %#x%s; on a PVM host only PVM-built guest kernels and freestanding guests run",
				ie.Suberror, internalErrorName(ie.Suberror), ie.Data[:n], m.ripOf(v))}, true
	case kabi.KVM_EXIT_FAIL_ENTRY:
		fe := v.cpu.FailEntry()
		return Exit{Reason: fmt.Sprintf("KVM could not enter the guest on vcpu %d", id),
			Err: fmt.Errorf("hardware entry failure reason %#x on cpu %d", fe.HardwareEntryFailureReason, fe.CPU)}, true
	case kabi.KVM_EXIT_UNKNOWN:
		return Exit{Reason: fmt.Sprintf("unknown exit on vcpu %d", id),
			Err: fmt.Errorf("hardware exit reason %#x", v.cpu.HardwareExitReason())}, true
	}
	return Exit{Reason: fmt.Sprintf("unexpected exit on vcpu %d", id), Err: fmt.Errorf("KVM exit reason %d%s", reason, m.ripOf(v))}, true
}

func (m *Machine) ripOf(v *vcpu) string {
	r, err := v.cpu.Regs()
	if err != nil {
		return ""
	}
	return fmt.Sprintf(" at rip %#x", r.RIP)
}

// shutdownState describes a vCPU after KVM_EXIT_SHUTDOWN. On Intel the
// registers are the faulting ones, and CR2 names the last page fault. On
// AMD, KVM reinitialises the vCPU on a shutdown exit (the VMCB is undefined
// after one: svm.c's shutdown_interception), so the registers read back are
// the reset state, rip 0xfff0 in the reset code segment, and say nothing
// about the fault; the report says so rather than print them.
func shutdownState(cpu *kvm.VCPU) string {
	r, err := cpu.Regs()
	if err != nil {
		return ""
	}
	s, err := cpu.Sregs()
	if err != nil {
		return fmt.Sprintf(" at rip %#x", r.RIP)
	}
	if r.RIP == resetRIP && s.CS.Base == resetCSBase {
		return fmt.Sprintf(" (registers unknown: KVM reset the vCPU on the shutdown exit, as it does on AMD, so it reads rip %#x, the reset vector; "+
			"record the host's kvm:kvm_exit trace events to see the rip and the exception being delivered when it happened)", r.RIP)
	}
	return fmt.Sprintf(" at rip %#x (rsp %#x, cs %#x, cr0 %#x, cr2 %#x, cr3 %#x, cr4 %#x, efer %#x)",
		r.RIP, r.RSP, s.CS.Selector, s.CR0, s.CR2, s.CR3, s.CR4, s.EFER)
}

// The x86 reset state of rip and the CS base (Intel SDM vol. 3A, 10.1.4
// "First Instruction Executed").
const (
	resetRIP    = 0xfff0
	resetCSBase = 0xffff0000
)

func internalErrorName(sub uint32) string {
	switch sub {
	case kabi.KVM_INTERNAL_ERROR_EMULATION:
		return "emulation failure"
	case kabi.KVM_INTERNAL_ERROR_SIMUL_EX:
		return "simultaneous exceptions"
	case kabi.KVM_INTERNAL_ERROR_DELIVERY_EV:
		return "event delivery failure"
	case kabi.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON:
		return "unexpected exit reason"
	}
	return "unknown"
}
