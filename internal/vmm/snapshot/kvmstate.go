package snapshot

import (
	"errors"
	"fmt"

	abi "github.com/thawvm/thaw/internal/abi/kvm"
	"github.com/thawvm/thaw/internal/vmm/kvm"
	"github.com/thawvm/thaw/internal/vmm/vmstate"
)

// CompleteExit finishes the vCPU's last exit before its state is read: a
// KVM_RUN with immediate_exit set completes pending userspace I/O (an IN's
// data, an MMIO read) and returns EINTR without entering the guest, as the
// KVM API documentation prescribes before saving state. The vCPU must not
// be running. Any thread may call it: KVM only notes the thread change
// (an RCU grace period, here and again when the vCPU's own thread next
// runs it), which a snapshot can afford. The immediate_exit flag is left
// as it was (a paused machine keeps it set).
func CompleteExit(cpu *kvm.VCPU) error {
	prev := cpu.RunData().ImmediateExit != 0
	cpu.SetImmediateExit(true)
	defer cpu.SetImmediateExit(prev)
	exit, err := cpu.Run()
	if errors.Is(err, kvm.ErrInterrupted) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("completing vcpu %d's last exit: %w", cpu.ID(), err)
	}
	return fmt.Errorf("completing vcpu %d's last exit: KVM_RUN with immediate_exit returned exit %d instead of EINTR", cpu.ID(), exit)
}

// SaveableMSRs returns the MSRs of KVM_GET_MSR_INDEX_LIST that cpu can
// read. The list names every MSR KVM knows how to migrate, including ones
// the vCPU's CPU model lacks (KVM_GET_MSRS then stops at the first of
// those), so each is probed once; keep the result for the VM's life, since
// it depends only on the host and the vCPU's CPUID.
func SaveableMSRs(sys *kvm.System, cpu *kvm.VCPU) ([]uint32, error) {
	list, err := sys.MSRIndexList()
	if err != nil {
		return nil, err
	}
	var ok []uint32
	for _, idx := range list {
		if _, err := cpu.MSRs([]uint32{idx}); err == nil {
			ok = append(ok, idx)
		}
	}
	if len(ok) == 0 {
		return nil, fmt.Errorf("none of the %d MSRs of KVM_GET_MSR_INDEX_LIST is readable on vcpu %d", len(list), cpu.ID())
	}
	return ok, nil
}

// CaptureVCPU reads a stopped vCPU's state (call CompleteExit first).
// The reads follow the order QEMU, Firecracker and cloud-hypervisor use:
// MP state first, because KVM_GET_MP_STATE runs kvm_apic_accept_events,
// which may change LAPIC and vCPU state; vCPU events last, since the other
// GET ioctls may change what is pending. msrs is SaveableMSRs' list;
// xsaveSize is KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) (0 means 4096).
func CaptureVCPU(cpu *kvm.VCPU, msrs []uint32, xsaveSize int) (vmstate.VCPU, error) {
	s := vmstate.VCPU{ID: cpu.ID()}
	cpuid, err := cpu.CPUID2()
	if err != nil {
		return s, err
	}
	s.CPUID = make([]vmstate.CPUIDEntry, len(cpuid))
	for i, e := range cpuid {
		s.CPUID[i] = vmstate.CPUIDEntry{Function: e.Function, Index: e.Index, Flags: e.Flags, EAX: e.EAX, EBX: e.EBX, ECX: e.ECX, EDX: e.EDX}
	}
	if s.MPState, err = cpu.MPState(); err != nil {
		return s, err
	}
	if s.Regs.V, err = cpu.Regs(); err != nil {
		return s, err
	}
	if s.Sregs.V, err = cpu.Sregs(); err != nil {
		return s, err
	}
	if s.XSave, err = cpu.XSave2(xsaveSize); err != nil {
		return s, err
	}
	if s.XCRs.V, err = cpu.XCRs(); err != nil {
		return s, err
	}
	if s.DebugRegs.V, err = cpu.DebugRegs(); err != nil {
		return s, err
	}
	if s.LAPIC.V, err = cpu.LAPIC(); err != nil {
		return s, err
	}
	entries, err := cpu.MSRs(msrs)
	if err != nil {
		return s, err
	}
	s.MSRs = make([]vmstate.MSR, len(entries))
	for i, e := range entries {
		s.MSRs[i] = vmstate.MSR{Index: e.Index, Data: e.Data}
	}
	if s.TSCKHz, err = cpu.TSCKHz(); err != nil {
		return s, err
	}
	if s.Events.V, err = cpu.VCPUEvents(); err != nil {
		return s, err
	}
	return s, nil
}

// RestoreVCPU writes a saved state into a freshly created vCPU, in the
// order the kernel's dependencies demand (QEMU's kvm_arch_put_registers,
// followed by Firecracker and cloud-hypervisor):
//   - CPUID first: later SETs check features against it;
//   - the TSC frequency, when it differs from the host's;
//   - MP state, then regs (KVM_SET_REGS clears pending exceptions, which
//     KVM_SET_VCPU_EVENTS restores at the end);
//   - sregs before LAPIC (sregs carry the APIC base);
//   - XSAVE, XCRs, debug registers;
//   - LAPIC before MSRs (MSR_IA32_TSC_DEADLINE only sticks on a
//     configured LAPIC);
//   - vCPU events last.
func RestoreVCPU(cpu *kvm.VCPU, s vmstate.VCPU) error {
	if s.ID != cpu.ID() {
		return fmt.Errorf("restoring vcpu %d from the state of vcpu %d", cpu.ID(), s.ID)
	}
	cpuid := make([]abi.CPUIDEntry2, len(s.CPUID))
	for i, e := range s.CPUID {
		cpuid[i] = abi.CPUIDEntry2{Function: e.Function, Index: e.Index, Flags: e.Flags, EAX: e.EAX, EBX: e.EBX, ECX: e.ECX, EDX: e.EDX}
	}
	if err := cpu.SetCPUID2(cpuid); err != nil {
		return err
	}
	if s.TSCKHz != 0 {
		cur, err := cpu.TSCKHz()
		if err != nil {
			return err
		}
		if cur != s.TSCKHz {
			if err := cpu.SetTSCKHz(s.TSCKHz); err != nil {
				return fmt.Errorf("the snapshot's TSC runs at %d kHz, this host's at %d kHz: %w", s.TSCKHz, cur, err)
			}
		}
	}
	if err := cpu.SetMPState(s.MPState); err != nil {
		return err
	}
	if err := cpu.SetRegs(s.Regs.V); err != nil {
		return err
	}
	if err := cpu.SetSregs(s.Sregs.V); err != nil {
		return err
	}
	if err := cpu.SetXSave(s.XSave); err != nil {
		return err
	}
	if err := cpu.SetXCRs(s.XCRs.V); err != nil {
		return err
	}
	if err := cpu.SetDebugRegs(s.DebugRegs.V); err != nil {
		return err
	}
	if err := cpu.SetLAPIC(s.LAPIC.V); err != nil {
		return err
	}
	msrs := make([]abi.MSREntry, len(s.MSRs))
	for i, m := range s.MSRs {
		msrs[i] = abi.MSREntry{Index: m.Index, Data: m.Data}
	}
	if err := cpu.SetMSRs(msrs); err != nil {
		return err
	}
	return cpu.SetVCPUEvents(s.Events.V)
}

// CaptureVM reads the in-kernel devices' state: PIT, kvmclock, then the
// PIC pair and IOAPIC (Firecracker's order). The vCPUs must be stopped.
func CaptureVM(vm *kvm.VM) (vmstate.VM, error) {
	var s vmstate.VM
	var err error
	if s.PIT.V, err = vm.PIT2(); err != nil {
		return s, err
	}
	if s.Clock.V, err = vm.Clock(); err != nil {
		return s, err
	}
	if s.PICMaster.V, err = vm.IRQChip(abi.KVM_IRQCHIP_PIC_MASTER); err != nil {
		return s, err
	}
	if s.PICSlave.V, err = vm.IRQChip(abi.KVM_IRQCHIP_PIC_SLAVE); err != nil {
		return s, err
	}
	if s.IOAPIC.V, err = vm.IRQChip(abi.KVM_IRQCHIP_IOAPIC); err != nil {
		return s, err
	}
	return s, nil
}

// RestoreVM writes saved in-kernel device state into a fresh VM that has
// its irqchip and PIT created, before its vCPUs' state is restored. The
// guest's kvmclock resumes from the saved value (flags cleared: the clock
// does not jump by the time spent in the snapshot, Firecracker's default),
// so guest time is continuous across the restore.
func RestoreVM(vm *kvm.VM, s vmstate.VM) error {
	if err := vm.SetPIT2(s.PIT.V); err != nil {
		return err
	}
	clock := s.Clock.V
	clock.Flags = 0
	if err := vm.SetClock(clock); err != nil {
		return err
	}
	for _, c := range []struct {
		id   uint32
		chip abi.IRQChip
	}{
		{abi.KVM_IRQCHIP_PIC_MASTER, s.PICMaster.V},
		{abi.KVM_IRQCHIP_PIC_SLAVE, s.PICSlave.V},
		{abi.KVM_IRQCHIP_IOAPIC, s.IOAPIC.V},
	} {
		if c.chip.ChipID != c.id {
			return fmt.Errorf("restoring irqchip %d: the saved state is for chip %d", c.id, c.chip.ChipID)
		}
		if err := vm.SetIRQChip(c.chip); err != nil {
			return err
		}
	}
	return nil
}
