package kvm

// Regs mirrors struct kvm_regs (arch/x86/include/uapi/asm/kvm.h).
type Regs struct {
	RAX, RBX, RCX, RDX uint64
	RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11   uint64
	R12, R13, R14, R15 uint64
	RIP, RFLAGS        uint64
}

// Segment mirrors struct kvm_segment.
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
	Padding  uint8
}

// DTable mirrors struct kvm_dtable (a GDT or IDT register).
type DTable struct {
	Base    uint64
	Limit   uint16
	Padding [3]uint16
}

// Sregs mirrors struct kvm_sregs.
type Sregs struct {
	CS, DS, ES, FS, GS, SS Segment
	TR, LDT                Segment
	GDT, IDT               DTable
	CR0, CR2, CR3, CR4     uint64
	CR8                    uint64
	EFER                   uint64
	APICBase               uint64
	InterruptBitmap        [(KVM_NR_INTERRUPTS + 63) / 64]uint64
}

// FPU mirrors struct kvm_fpu.
type FPU struct {
	FPR        [8][16]uint8
	FCW        uint16
	FSW        uint16
	FTWX       uint8
	Pad1       uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]uint8
	MXCSR      uint32
	Pad2       uint32
}

// XSave mirrors struct kvm_xsave without its flexible extra[] tail: the
// legacy 4 KiB area of KVM_GET_XSAVE. KVM_GET_XSAVE2 may need more (the
// size KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) reports, e.g. with AMX state), so
// callers of that ioctl use a byte buffer of that size instead.
type XSave struct {
	Region [1024]uint32
}

// XCR mirrors struct kvm_xcr.
type XCR struct {
	XCR      uint32
	Reserved uint32
	Value    uint64
}

// XCRs mirrors struct kvm_xcrs.
type XCRs struct {
	NrXCRs  uint32
	Flags   uint32
	XCRs    [KVM_MAX_XCRS]XCR
	Padding [16]uint64
}

// MSREntry mirrors struct kvm_msr_entry.
type MSREntry struct {
	Index    uint32
	Reserved uint32
	Data     uint64
}

// MSRsHeader mirrors the fixed head of struct kvm_msrs; nmsrs MSREntry
// values follow it in memory.
type MSRsHeader struct {
	NMSRs uint32
	Pad   uint32
}

// MSRListHeader mirrors the fixed head of struct kvm_msr_list; nmsrs uint32
// indices follow it in memory.
type MSRListHeader struct {
	NMSRs uint32
}

// LAPICState mirrors struct kvm_lapic_state.
type LAPICState struct {
	Regs [KVM_APIC_REG_SIZE]byte
}

// MPState mirrors struct kvm_mp_state.
type MPState struct {
	MPState uint32
}

// VCPUEvents mirrors struct kvm_vcpu_events.
type VCPUEvents struct {
	Exception struct {
		Injected     uint8
		Nr           uint8
		HasErrorCode uint8
		Pending      uint8
		ErrorCode    uint32
	}
	Interrupt struct {
		Injected uint8
		Nr       uint8
		Soft     uint8
		Shadow   uint8
	}
	NMI struct {
		Injected uint8
		Pending  uint8
		Masked   uint8
		Pad      uint8
	}
	SIPIVector uint32
	Flags      uint32
	SMI        struct {
		SMM          uint8
		Pending      uint8
		SMMInsideNMI uint8
		LatchedInit  uint8
	}
	TripleFault struct {
		Pending uint8
	}
	Reserved            [26]uint8
	ExceptionHasPayload uint8
	ExceptionPayload    uint64
}

// DebugRegs mirrors struct kvm_debugregs.
type DebugRegs struct {
	DB       [4]uint64
	DR6      uint64
	DR7      uint64
	Flags    uint64
	Reserved [9]uint64
}

// CPUIDEntry2 mirrors struct kvm_cpuid_entry2.
type CPUIDEntry2 struct {
	Function uint32
	Index    uint32
	Flags    uint32
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
	Padding  [3]uint32
}

// CPUID2Header mirrors the fixed head of struct kvm_cpuid2; nent
// CPUIDEntry2 values follow it in memory.
type CPUID2Header struct {
	Nent    uint32
	Padding uint32
}

// PICState mirrors struct kvm_pic_state.
type PICState struct {
	LastIRR                uint8
	IRR                    uint8
	IMR                    uint8
	ISR                    uint8
	PriorityAdd            uint8
	IRQBase                uint8
	ReadRegSelect          uint8
	Poll                   uint8
	SpecialMask            uint8
	InitState              uint8
	AutoEOI                uint8
	RotateOnAutoEOI        uint8
	SpecialFullyNestedMode uint8
	Init4                  uint8
	ELCR                   uint8
	ELCRMask               uint8
}

// IOAPICState mirrors struct kvm_ioapic_state.
type IOAPICState struct {
	BaseAddress uint64
	IOREGSEL    uint32
	ID          uint32
	IRR         uint32
	Pad         uint32
	Redirtbl    [KVM_IOAPIC_NUM_PINS]uint64
}

// IRQChip mirrors struct kvm_irqchip. Chip holds the union: a PICState for
// KVM_IRQCHIP_PIC_MASTER and _SLAVE, an IOAPICState for KVM_IRQCHIP_IOAPIC,
// at offset 0.
type IRQChip struct {
	ChipID uint32
	Pad    uint32
	Chip   [512]byte
}

// PITChannelState mirrors struct kvm_pit_channel_state.
type PITChannelState struct {
	Count         uint32
	LatchedCount  uint16
	CountLatched  uint8
	StatusLatched uint8
	Status        uint8
	ReadState     uint8
	WriteState    uint8
	WriteLatch    uint8
	RWMode        uint8
	Mode          uint8
	BCD           uint8
	Gate          uint8
	CountLoadTime int64
}

// PITState2 mirrors struct kvm_pit_state2.
type PITState2 struct {
	Channels [3]PITChannelState
	Flags    uint32
	Reserved [9]uint32
}

// PITConfig mirrors struct kvm_pit_config.
type PITConfig struct {
	Flags uint32
	Pad   [15]uint32
}

// ClockData mirrors struct kvm_clock_data.
type ClockData struct {
	Clock    uint64
	Flags    uint32
	Pad0     uint32
	Realtime uint64
	HostTSC  uint64
	Pad      [4]uint32
}

// IRQFD mirrors struct kvm_irqfd.
type IRQFD struct {
	FD         uint32
	GSI        uint32
	Flags      uint32
	ResampleFD uint32
	Pad        [16]uint8
}

// IRQLevel mirrors struct kvm_irq_level. IRQ doubles as the union's status
// field for KVM_IRQ_LINE_STATUS.
type IRQLevel struct {
	IRQ   uint32
	Level uint32
}

// UserspaceMemoryRegion mirrors struct kvm_userspace_memory_region.
type UserspaceMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

// EnableCap mirrors struct kvm_enable_cap.
type EnableCap struct {
	Cap   uint32
	Flags uint32
	Args  [4]uint64
	Pad   [64]uint8
}

// DirtyLog mirrors struct kvm_dirty_log; Bitmap is the user address of the
// bitmap (the union with padding2).
type DirtyLog struct {
	Slot   uint32
	Pad1   uint32
	Bitmap uint64
}

// SignalMaskHeader mirrors the fixed head of struct kvm_signal_mask; len
// bytes of sigset follow it.
type SignalMaskHeader struct {
	Len uint32
}
