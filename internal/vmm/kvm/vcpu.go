package kvm

import (
	"errors"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"

	abi "github.com/thawvm/thaw/internal/abi/kvm"
)

// ErrInterrupted is returned by VCPU.Run when KVM_RUN returned EINTR (a
// signal arrived or immediate_exit was set) or EAGAIN (an application
// processor waiting for INIT/SIPI was woken: x86.c's
// kvm_arch_vcpu_ioctl_run returns -EAGAIN for a vCPU in
// KVM_MP_STATE_UNINITIALIZED, and QEMU simply re-enters). The caller checks
// for a pause or stop request and calls Run again.
var ErrInterrupted = errors.New("KVM_RUN interrupted")

// VCPU is one virtual CPU. It owns its descriptor and its kvm_run mapping.
// Run and the register accessors must be called from one goroutine at a
// time; KVM also expects Run to be called from one OS thread.
type VCPU struct {
	h   handle
	id  int
	mem []byte
	run *abi.Run
}

func newVCPU(h handle, id, mmapSize int) (*VCPU, error) {
	mem, run, err := mapRun(h, mmapSize)
	if err != nil {
		return nil, err
	}
	return &VCPU{h: h, id: id, mem: mem, run: run}, nil
}

// ID returns the vCPU's index (its initial APIC ID).
func (c *VCPU) ID() int { return c.id }

// Close unmaps kvm_run and closes the descriptor. No Run may be in progress.
func (c *VCPU) Close() error {
	var errs []error
	if c.mem != nil {
		if err := unix.Munmap(c.mem); err != nil {
			errs = append(errs, fmt.Errorf("munmap kvm_run: %w", err))
		}
		c.mem, c.run = nil, nil
	}
	if err := c.h.close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Run enters the guest once and returns the exit reason
// (abi.KVM_EXIT_*). EINTR and EAGAIN are returned as ErrInterrupted; any other error
// (EFAULT when guest memory cannot be faulted in, for one) is returned
// wrapped.
func (c *VCPU) Run() (uint32, error) {
	_, err := c.h.ioctlOnce(abi.KVM_RUN, nil)
	if err != nil {
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			return abi.KVM_EXIT_INTR, ErrInterrupted
		}
		return 0, fmt.Errorf("KVM_RUN vcpu %d: %w", c.id, err)
	}
	return c.run.ExitReason, nil
}

// RunData exposes the shared kvm_run area. Only the vCPU's own goroutine
// may touch it, except ImmediateExit, which SetImmediateExit writes.
func (c *VCPU) RunData() *abi.Run { return c.run }

// SetImmediateExit sets kvm_run.immediate_exit: while it is 1, KVM_RUN
// returns EINTR at once instead of entering the guest. Together with a
// signal to the vCPU's thread it kicks a running vCPU out of the guest.
func (c *VCPU) SetImmediateExit(on bool) {
	var v uint8
	if on {
		v = 1
	}
	c.run.ImmediateExit = v
}

// IO describes a KVM_EXIT_IO exit: the port, whether the guest writes
// (OUT), and the data buffer inside kvm_run (size*count bytes) that an OUT
// reads from and an IN must fill.
func (c *VCPU) IO() (port uint16, out bool, size int, data []byte, err error) {
	io := exitUnion[abi.RunIO](c.run)
	n := int(io.Size) * int(io.Count)
	end := int(io.DataOffset) + n
	if io.DataOffset < 1 || end > len(c.mem) {
		return 0, false, 0, nil, fmt.Errorf("KVM_EXIT_IO data [%#x, +%d) outside the %d-byte kvm_run area", io.DataOffset, n, len(c.mem))
	}
	return io.Port, io.Direction == abi.KVM_EXIT_IO_OUT, int(io.Size), c.mem[io.DataOffset:end], nil
}

// MMIO describes a KVM_EXIT_MMIO exit: the address, whether the guest
// writes, and the data (1-8 bytes) a write carries or a read must fill.
func (c *VCPU) MMIO() (addr uint64, write bool, data []byte) {
	m := exitUnion[abi.RunMMIO](c.run)
	n := min(int(m.Len), len(m.Data))
	return m.PhysAddr, m.IsWrite != 0, m.Data[:n]
}

// InternalError returns kvm_run.internal after KVM_EXIT_INTERNAL_ERROR.
func (c *VCPU) InternalError() abi.RunInternal {
	return *exitUnion[abi.RunInternal](c.run)
}

// SystemEvent returns kvm_run.system_event after KVM_EXIT_SYSTEM_EVENT.
func (c *VCPU) SystemEvent() abi.RunSystemEvent {
	return *exitUnion[abi.RunSystemEvent](c.run)
}

// FailEntry returns kvm_run.fail_entry after KVM_EXIT_FAIL_ENTRY.
func (c *VCPU) FailEntry() abi.RunFailEntry {
	return *exitUnion[abi.RunFailEntry](c.run)
}

// HardwareExitReason returns kvm_run.hw after KVM_EXIT_UNKNOWN.
func (c *VCPU) HardwareExitReason() uint64 {
	return exitUnion[abi.RunHW](c.run).HardwareExitReason
}

// get and set back the fixed-size state accessors below.
func get[T any](c *VCPU, req uintptr, name string) (T, error) {
	var v T
	if _, err := ioctlPtr(c.h, req, &v); err != nil {
		return v, fmt.Errorf("%s vcpu %d: %w", name, c.id, err)
	}
	return v, nil
}

func set[T any](c *VCPU, req uintptr, name string, v T) error {
	if _, err := ioctlPtr(c.h, req, &v); err != nil {
		return fmt.Errorf("%s vcpu %d: %w", name, c.id, err)
	}
	return nil
}

// Regs reads the general-purpose registers.
func (c *VCPU) Regs() (abi.Regs, error) { return get[abi.Regs](c, abi.KVM_GET_REGS, "KVM_GET_REGS") }

// SetRegs writes the general-purpose registers.
func (c *VCPU) SetRegs(r abi.Regs) error { return set(c, abi.KVM_SET_REGS, "KVM_SET_REGS", r) }

// Sregs reads the segment, control and descriptor-table registers.
func (c *VCPU) Sregs() (abi.Sregs, error) {
	return get[abi.Sregs](c, abi.KVM_GET_SREGS, "KVM_GET_SREGS")
}

// SetSregs writes the segment, control and descriptor-table registers.
func (c *VCPU) SetSregs(s abi.Sregs) error { return set(c, abi.KVM_SET_SREGS, "KVM_SET_SREGS", s) }

// FPU reads the legacy FPU/SSE state.
func (c *VCPU) FPU() (abi.FPU, error) { return get[abi.FPU](c, abi.KVM_GET_FPU, "KVM_GET_FPU") }

// SetFPU writes the legacy FPU/SSE state.
func (c *VCPU) SetFPU(f abi.FPU) error { return set(c, abi.KVM_SET_FPU, "KVM_SET_FPU", f) }

// XSave reads the legacy 4 KiB XSAVE area (KVM_GET_XSAVE).
func (c *VCPU) XSave() (abi.XSave, error) {
	return get[abi.XSave](c, abi.KVM_GET_XSAVE, "KVM_GET_XSAVE")
}

// XSave2 reads the full XSAVE area with KVM_GET_XSAVE2; size is what
// KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) reported (at least 4096).
func (c *VCPU) XSave2(size int) ([]byte, error) {
	if size < abi.KVM_XSAVE_LEGACY_SIZE {
		size = abi.KVM_XSAVE_LEGACY_SIZE
	}
	buf := make([]byte, size)
	if _, err := c.h.ioctlBytes(abi.KVM_GET_XSAVE2, buf); err != nil {
		return nil, fmt.Errorf("KVM_GET_XSAVE2 vcpu %d: %w", c.id, err)
	}
	return buf, nil
}

// SetXSave writes an XSAVE area read by XSave or XSave2; KVM_SET_XSAVE
// takes the larger size too when KVM_CAP_XSAVE2 is enabled.
func (c *VCPU) SetXSave(area []byte) error {
	if len(area) < abi.KVM_XSAVE_LEGACY_SIZE {
		return fmt.Errorf("KVM_SET_XSAVE vcpu %d: area of %d bytes, want at least %d", c.id, len(area), abi.KVM_XSAVE_LEGACY_SIZE)
	}
	if _, err := c.h.ioctlBytes(abi.KVM_SET_XSAVE, area); err != nil {
		return fmt.Errorf("KVM_SET_XSAVE vcpu %d: %w", c.id, err)
	}
	return nil
}

// XCRs reads the extended control registers (XCR0).
func (c *VCPU) XCRs() (abi.XCRs, error) { return get[abi.XCRs](c, abi.KVM_GET_XCRS, "KVM_GET_XCRS") }

// SetXCRs writes the extended control registers.
func (c *VCPU) SetXCRs(x abi.XCRs) error { return set(c, abi.KVM_SET_XCRS, "KVM_SET_XCRS", x) }

// LAPIC reads the in-kernel local APIC's registers.
func (c *VCPU) LAPIC() (abi.LAPICState, error) {
	return get[abi.LAPICState](c, abi.KVM_GET_LAPIC, "KVM_GET_LAPIC")
}

// SetLAPIC writes the in-kernel local APIC's registers.
func (c *VCPU) SetLAPIC(l abi.LAPICState) error { return set(c, abi.KVM_SET_LAPIC, "KVM_SET_LAPIC", l) }

// MPState reads the multiprocessing state (runnable, halted, ...).
func (c *VCPU) MPState() (uint32, error) {
	s, err := get[abi.MPState](c, abi.KVM_GET_MP_STATE, "KVM_GET_MP_STATE")
	return s.MPState, err
}

// SetMPState writes the multiprocessing state.
func (c *VCPU) SetMPState(s uint32) error {
	return set(c, abi.KVM_SET_MP_STATE, "KVM_SET_MP_STATE", abi.MPState{MPState: s})
}

// VCPUEvents reads pending exceptions, interrupts, NMIs and SMIs.
func (c *VCPU) VCPUEvents() (abi.VCPUEvents, error) {
	return get[abi.VCPUEvents](c, abi.KVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS")
}

// SetVCPUEvents writes pending events.
func (c *VCPU) SetVCPUEvents(e abi.VCPUEvents) error {
	return set(c, abi.KVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS", e)
}

// DebugRegs reads the debug registers.
func (c *VCPU) DebugRegs() (abi.DebugRegs, error) {
	return get[abi.DebugRegs](c, abi.KVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS")
}

// SetDebugRegs writes the debug registers.
func (c *VCPU) SetDebugRegs(d abi.DebugRegs) error {
	return set(c, abi.KVM_SET_DEBUGREGS, "KVM_SET_DEBUGREGS", d)
}

// MSRs reads the MSRs named by indices. It fails, naming the first one,
// when KVM could not read them all.
func (c *VCPU) MSRs(indices []uint32) ([]abi.MSREntry, error) {
	if len(indices) == 0 {
		return nil, nil
	}
	buf, entries := msrBuf(len(indices))
	for i, idx := range indices {
		entries[i].Index = idx
	}
	n, err := c.h.ioctlSlice64(abi.KVM_GET_MSRS, buf)
	if err != nil {
		return nil, fmt.Errorf("KVM_GET_MSRS vcpu %d: %w", c.id, err)
	}
	if int(n) != len(indices) {
		return nil, fmt.Errorf("KVM_GET_MSRS vcpu %d: read %d of %d MSRs; MSR %#x is not readable", c.id, n, len(indices), indices[n])
	}
	return slices.Clone(entries), nil
}

// SetMSRs writes MSRs. It fails, naming the first one, when KVM could not
// write them all.
func (c *VCPU) SetMSRs(msrs []abi.MSREntry) error {
	if len(msrs) == 0 {
		return nil
	}
	buf, entries := msrBuf(len(msrs))
	copy(entries, msrs)
	n, err := c.h.ioctlSlice64(abi.KVM_SET_MSRS, buf)
	if err != nil {
		return fmt.Errorf("KVM_SET_MSRS vcpu %d: %w", c.id, err)
	}
	if int(n) != len(msrs) {
		return fmt.Errorf("KVM_SET_MSRS vcpu %d: wrote %d of %d MSRs; MSR %#x = %#x was refused", c.id, n, len(msrs), msrs[n].Index, msrs[n].Data)
	}
	return nil
}

// SetCPUID2 sets the CPUID leaves the guest sees.
func (c *VCPU) SetCPUID2(entries []abi.CPUIDEntry2) error {
	if len(entries) == 0 {
		return fmt.Errorf("KVM_SET_CPUID2 vcpu %d: no CPUID entries", c.id)
	}
	buf, _, dst := cpuidBuf(len(entries))
	copy(dst, entries)
	if _, err := c.h.ioctlSlice64(abi.KVM_SET_CPUID2, buf); err != nil {
		return fmt.Errorf("KVM_SET_CPUID2 vcpu %d (%d entries): %w", c.id, len(entries), err)
	}
	return nil
}

// CPUID2 reads back the CPUID leaves set on the vCPU.
func (c *VCPU) CPUID2() ([]abi.CPUIDEntry2, error) {
	return cpuidLoop(func(buf []uint64) error {
		_, err := c.h.ioctlSlice64(abi.KVM_GET_CPUID2, buf)
		return err
	}, "KVM_GET_CPUID2")
}
