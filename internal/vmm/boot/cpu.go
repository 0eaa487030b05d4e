package boot

import (
	"encoding/binary"
	"fmt"

	kabi "github.com/thawvm/thaw/internal/abi/kvm"
	"github.com/thawvm/thaw/internal/vmm/kvm"
	"github.com/thawvm/thaw/internal/vmm/memory"
)

// GDT selectors: null, null, a 64-bit code segment, a data segment, and a
// 32-bit code segment for PVH entry. Linux's boot protocol wants __BOOT_CS
// = 0x10 and __BOOT_DS = 0x18.
const (
	selCode64 = 0x10
	selData   = 0x18
	selCode32 = 0x20
)

var gdt = []uint64{
	0,
	0,
	0x00af9b000000ffff, // 0x10: code, 64-bit, present, DPL 0, 4 GiB
	0x00cf93000000ffff, // 0x18: data, read/write, 4 GiB
	0x00cf9b000000ffff, // 0x20: code, 32-bit, 4 GiB
}

func writeGDT(mem *memory.Memory) error {
	b := make([]byte, 8*len(gdt))
	for i, d := range gdt {
		binary.LittleEndian.PutUint64(b[8*i:], d)
	}
	if err := mem.Write(GDTAddr, b); err != nil {
		return fmt.Errorf("writing GDT: %w", err)
	}
	// An empty IDT: interrupts stay off until the guest loads its own.
	if err := mem.PutUint64(IDTAddr, 0); err != nil {
		return fmt.Errorf("writing IDT: %w", err)
	}
	return nil
}

// writePageTables identity-maps IdentityMapSize bytes with 2 MiB pages:
// PML4[0] → PDPT, PDPT[0..3] → four page directories.
func writePageTables(mem *memory.Memory) error {
	const (
		present, writable, huge = 1 << 0, 1 << 1, 1 << 7
		pdCount                 = IdentityMapSize >> 30
	)
	if err := mem.PutUint64(PML4Addr, PDPTAddr|present|writable); err != nil {
		return fmt.Errorf("writing page tables: %w", err)
	}
	for i := range uint64(pdCount) {
		pd := PDAddr + i*memory.PageSize
		if err := mem.PutUint64(PDPTAddr+8*i, pd|present|writable); err != nil {
			return fmt.Errorf("writing page tables: %w", err)
		}
		for j := range uint64(512) {
			addr := i<<30 | j<<21
			if err := mem.PutUint64(pd+8*j, addr|present|writable|huge); err != nil {
				return fmt.Errorf("writing page tables: %w", err)
			}
		}
	}
	return nil
}

func segment(sel uint16) kabi.Segment {
	s := kabi.Segment{Limit: 0xffffffff, Selector: sel, Present: 1, S: 1, G: 1}
	switch sel {
	case selCode64:
		s.Type, s.L = 0xb, 1
	case selCode32:
		s.Type, s.DB = 0xb, 1
	default:
		s.Type, s.DB = 0x3, 1
	}
	return s
}

// SetupVCPU puts cpu in the state its boot protocol asks for. The boot vCPU
// (id 0) starts at e; the others stay in wait-for-SIPI until the guest
// starts them through its local APIC, as on real hardware. cpuid is the
// vCPU's own table (cpuid.Normalize), set as given.
func SetupVCPU(cpu *kvm.VCPU, e Entry, cpuid []kabi.CPUIDEntry2, lapic bool) error {
	if err := cpu.SetCPUID2(cpuid); err != nil {
		return err
	}
	msrs := []kabi.MSREntry{
		{Index: kabi.MSR_IA32_SYSENTER_CS}, {Index: kabi.MSR_IA32_SYSENTER_ESP}, {Index: kabi.MSR_IA32_SYSENTER_EIP},
		{Index: kabi.MSR_STAR}, {Index: kabi.MSR_CSTAR}, {Index: kabi.MSR_KERNEL_GS_BASE},
		{Index: kabi.MSR_SYSCALL_MASK}, {Index: kabi.MSR_LSTAR},
		{Index: kabi.MSR_IA32_MISC_ENABLE, Data: kabi.MSR_IA32_MISC_ENABLE_FAST_STRING},
	}
	if err := cpu.SetMSRs(msrs); err != nil {
		return err
	}
	if err := cpu.SetFPU(kabi.FPU{FCW: 0x37f, MXCSR: 0x1f80}); err != nil {
		return err
	}
	if lapic {
		if err := setupLINTs(cpu); err != nil {
			return err
		}
	}
	if cpu.ID() != 0 {
		return nil
	}
	s, err := cpu.Sregs()
	if err != nil {
		return err
	}
	s.GDT = kabi.DTable{Base: GDTAddr, Limit: uint16(8*len(gdt) - 1)}
	s.IDT = kabi.DTable{Base: IDTAddr, Limit: 7}
	data := segment(selData)
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.TR = kabi.Segment{Limit: 0xfffff, Type: 0xb, Present: 1} // a busy 64-bit TSS, as KVM wants
	regs := kabi.Regs{RFLAGS: kabi.X86_EFLAGS_FIXED, RIP: e.RIP}
	if e.PVH {
		// PVH: 32-bit protected mode, paging off, start info in EBX
		// (xen/include/public/arch-x86/hvm/start_info.h).
		s.CS = segment(selCode32)
		s.CR0 = kabi.X86_CR0_PE | kabi.X86_CR0_ET
		s.CR4, s.EFER = 0, 0
		regs.RBX = e.BootInfo
	} else {
		// 64-bit boot protocol: long mode, identity paging, boot_params
		// in RSI (Documentation/arch/x86/boot.rst).
		s.CS = segment(selCode64)
		s.CR3 = PML4Addr
		s.CR4 = kabi.X86_CR4_PAE
		s.CR0 = kabi.X86_CR0_PE | kabi.X86_CR0_ET | kabi.X86_CR0_NE | kabi.X86_CR0_PG
		s.EFER = kabi.EFER_LME | kabi.EFER_LMA
		regs.RSP, regs.RBP = BootStackAddr, BootStackAddr
		regs.RSI = e.BootInfo
	}
	if err := cpu.SetSregs(s); err != nil {
		return err
	}
	return cpu.SetRegs(regs)
}

// setupLINTs programs the local APIC's LINT0 as ExtINT (the PIC's output)
// and LINT1 as NMI, what the MP table announces.
func setupLINTs(cpu *kvm.VCPU) error {
	const (
		lvtLINT0     = 0x350
		lvtLINT1     = 0x360
		modeExtINT   = 7 << 8
		modeNMI      = 4 << 8
		deliveryMask = 7 << 8
	)
	l, err := cpu.LAPIC()
	if err != nil {
		return err
	}
	le := binary.LittleEndian
	v0 := le.Uint32(l.Regs[lvtLINT0:])
	le.PutUint32(l.Regs[lvtLINT0:], v0&^deliveryMask|modeExtINT)
	v1 := le.Uint32(l.Regs[lvtLINT1:])
	le.PutUint32(l.Regs[lvtLINT1:], v1&^deliveryMask|modeNMI)
	return cpu.SetLAPIC(l)
}
