package kvm

import (
	"fmt"
	"syscall"

	abi "github.com/thawvm/thaw/internal/abi/kvm"
)

// VM is a KVM virtual machine. It owns its descriptor; vCPUs created from it
// own theirs.
type VM struct {
	h        handle
	mmapSize int
}

// Close closes the VM's descriptor. The kernel frees the VM once its vCPUs
// are closed too.
func (v *VM) Close() error { return v.h.close() }

// SetUserMemoryRegion installs, changes or (MemorySize 0) deletes a memory
// slot.
func (v *VM) SetUserMemoryRegion(r abi.UserspaceMemoryRegion) error {
	if _, err := ioctlPtr(v.h, abi.KVM_SET_USER_MEMORY_REGION, &r); err != nil {
		return fmt.Errorf("KVM_SET_USER_MEMORY_REGION slot %d gpa %#x size %#x: %w", r.Slot, r.GuestPhysAddr, r.MemorySize, err)
	}
	return nil
}

// SetTSSAddr places the three-page TSS region Intel VMX needs for real
// mode emulation at a guest-physical address that is not RAM.
func (v *VM) SetTSSAddr(addr uint64) error {
	if _, err := v.h.ioctlVal(abi.KVM_SET_TSS_ADDR, uintptr(addr)); err != nil {
		return fmt.Errorf("KVM_SET_TSS_ADDR %#x: %w", addr, err)
	}
	return nil
}

// SetIdentityMapAddr places the one-page identity map Intel VMX needs for
// unpaged protected mode at a guest-physical address that is not RAM.
func (v *VM) SetIdentityMapAddr(addr uint64) error {
	if _, err := ioctlPtr(v.h, abi.KVM_SET_IDENTITY_MAP_ADDR, &addr); err != nil {
		return fmt.Errorf("KVM_SET_IDENTITY_MAP_ADDR %#x: %w", addr, err)
	}
	return nil
}

// CreateIRQChip creates the in-kernel PIC pair, IOAPIC and local APICs.
// It must precede CreateVCPU.
func (v *VM) CreateIRQChip() error {
	if _, err := v.h.ioctlVal(abi.KVM_CREATE_IRQCHIP, 0); err != nil {
		return fmt.Errorf("KVM_CREATE_IRQCHIP: %w", err)
	}
	return nil
}

// CreatePIT2 creates the in-kernel i8254 PIT; flags is 0 or
// abi.KVM_PIT_SPEAKER_DUMMY.
func (v *VM) CreatePIT2(flags uint32) error {
	c := abi.PITConfig{Flags: flags}
	if _, err := ioctlPtr(v.h, abi.KVM_CREATE_PIT2, &c); err != nil {
		return fmt.Errorf("KVM_CREATE_PIT2: %w", err)
	}
	return nil
}

// IRQLine sets the level of interrupt line irq (a GSI) on the in-kernel
// irqchip.
func (v *VM) IRQLine(irq uint32, high bool) error {
	l := abi.IRQLevel{IRQ: irq}
	if high {
		l.Level = 1
	}
	if _, err := ioctlPtr(v.h, abi.KVM_IRQ_LINE, &l); err != nil {
		return fmt.Errorf("KVM_IRQ_LINE irq %d level %d: %w", irq, l.Level, err)
	}
	return nil
}

// RegisterIRQFD makes every write to the eventfd ev inject an edge on gsi.
// The caller keeps owning ev; KVM holds its own reference to the eventfd.
func (v *VM) RegisterIRQFD(ev syscall.Conn, gsi uint32) error {
	return v.irqfd(ev, gsi, 0)
}

// UnregisterIRQFD undoes RegisterIRQFD.
func (v *VM) UnregisterIRQFD(ev syscall.Conn, gsi uint32) error {
	return v.irqfd(ev, gsi, abi.KVM_IRQFD_FLAG_DEASSIGN)
}

func (v *VM) irqfd(ev syscall.Conn, gsi, flags uint32) error {
	rc, err := ev.SyscallConn()
	if err != nil {
		return fmt.Errorf("KVM_IRQFD gsi %d: %w", gsi, err)
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		a := abi.IRQFD{FD: uint32(fd), GSI: gsi, Flags: flags}
		_, ierr = ioctlPtr(v.h, abi.KVM_IRQFD, &a)
	}); err != nil {
		return fmt.Errorf("KVM_IRQFD gsi %d: %w", gsi, err)
	}
	if ierr != nil {
		return fmt.Errorf("KVM_IRQFD gsi %d flags %#x: %w", gsi, flags, ierr)
	}
	return nil
}

// IRQChip reads the state of one in-kernel interrupt controller
// (abi.KVM_IRQCHIP_PIC_MASTER, _PIC_SLAVE or _IOAPIC).
func (v *VM) IRQChip(id uint32) (abi.IRQChip, error) {
	c := abi.IRQChip{ChipID: id}
	if _, err := ioctlPtr(v.h, abi.KVM_GET_IRQCHIP, &c); err != nil {
		return c, fmt.Errorf("KVM_GET_IRQCHIP chip %d: %w", id, err)
	}
	return c, nil
}

// SetIRQChip restores the state of the controller c.ChipID names.
func (v *VM) SetIRQChip(c abi.IRQChip) error {
	if _, err := ioctlPtr(v.h, abi.KVM_SET_IRQCHIP, &c); err != nil {
		return fmt.Errorf("KVM_SET_IRQCHIP chip %d: %w", c.ChipID, err)
	}
	return nil
}

// PIT2 reads the in-kernel PIT's state.
func (v *VM) PIT2() (abi.PITState2, error) {
	var s abi.PITState2
	if _, err := ioctlPtr(v.h, abi.KVM_GET_PIT2, &s); err != nil {
		return s, fmt.Errorf("KVM_GET_PIT2: %w", err)
	}
	return s, nil
}

// SetPIT2 restores the in-kernel PIT's state.
func (v *VM) SetPIT2(s abi.PITState2) error {
	if _, err := ioctlPtr(v.h, abi.KVM_SET_PIT2, &s); err != nil {
		return fmt.Errorf("KVM_SET_PIT2: %w", err)
	}
	return nil
}

// Clock reads the VM's kvmclock.
func (v *VM) Clock() (abi.ClockData, error) {
	var c abi.ClockData
	if _, err := ioctlPtr(v.h, abi.KVM_GET_CLOCK, &c); err != nil {
		return c, fmt.Errorf("KVM_GET_CLOCK: %w", err)
	}
	return c, nil
}

// SetClock sets the VM's kvmclock.
func (v *VM) SetClock(c abi.ClockData) error {
	if _, err := ioctlPtr(v.h, abi.KVM_SET_CLOCK, &c); err != nil {
		return fmt.Errorf("KVM_SET_CLOCK: %w", err)
	}
	return nil
}

// CreateVCPU creates vCPU id (its initial APIC ID) and maps its kvm_run
// area. The VCPU owns its descriptor and mapping.
func (v *VM) CreateVCPU(id int) (*VCPU, error) {
	r, err := v.h.ioctlVal(abi.KVM_CREATE_VCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU %d: %w", id, err)
	}
	h, err := fileFromFD(r, fmt.Sprintf("kvm-vcpu:%d", id))
	if err != nil {
		return nil, err
	}
	c, err := newVCPU(h, id, v.mmapSize)
	if err != nil {
		h.close()
		return nil, fmt.Errorf("vcpu %d: %w", id, err)
	}
	return c, nil
}
