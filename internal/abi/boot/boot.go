// Package boot mirrors the x86 boot ABIs a VMM writes into guest memory:
// the Linux boot protocol's zero page (Documentation/arch/x86/boot.rst,
// arch/x86/include/uapi/asm/bootparam.h), the PVH start info
// (xen/include/public/arch-x86/hvm/start_info.h) and the Intel
// MultiProcessor Specification 1.4 tables (arch/x86/include/asm/mpspec_def.h).
//
// Structs here are packed, little-endian layouts meant for encoding/binary,
// which adds no padding; their binary sizes are asserted in boot_test.go.
// The package holds no logic.
package boot

// Offsets into struct boot_params (the 4 KiB "zero page") and its embedded
// struct setup_header, from arch/x86/include/uapi/asm/bootparam.h.
const (
	ZeroPageSize = 4096

	ExtRamdiskImage = 0x0c0 // __u32 ext_ramdisk_image
	ExtRamdiskSize  = 0x0c4
	ExtCmdLinePtr   = 0x0c8
	E820Entries     = 0x1e8 // __u8 e820_entries
	SetupSects      = 0x1f1 // setup_header starts here
	BootFlag        = 0x1fe // __u16, must be 0xAA55
	Header          = 0x202 // __u32, must be "HdrS"
	Version         = 0x206 // __u16
	TypeOfLoader    = 0x210 // __u8
	LoadFlags       = 0x211 // __u8
	RamdiskImage    = 0x218 // __u32
	RamdiskSize     = 0x21c // __u32
	HeapEndPtr      = 0x224 // __u16
	CmdLinePtr      = 0x228 // __u32
	InitrdAddrMax   = 0x22c // __u32
	KernelAlignment = 0x230 // __u32
	CmdlineSize     = 0x238 // __u32
	E820Table       = 0x2d0 // struct boot_e820_entry[E820MaxEntriesZeropage]

	E820MaxEntriesZeropage = 128

	BootFlagMagic     = 0xAA55
	HeaderMagic       = 0x53726448 // "HdrS"
	LoaderTypeUnknown = 0xff       // type_of_loader for a boot loader without an assigned ID
	LoadedHigh        = 1 << 0     // loadflags: protected-mode code loaded at 0x100000
	CanUseHeap        = 1 << 7
)

// E820 memory types (arch/x86/include/asm/e820/types.h).
const (
	E820TypeRAM      = 1
	E820TypeReserved = 2
)

// E820Entry mirrors struct boot_e820_entry (packed, 20 bytes).
type E820Entry struct {
	Addr uint64
	Size uint64
	Type uint32
}

// PVH boot (xen/include/public/arch-x86/hvm/start_info.h, xen/include/public/elfnote.h).
const (
	// XenElfnotePhys32Entry is the ELF note type (in a note named "Xen")
	// whose descriptor is the 32-bit physical PVH entry point.
	XenElfnotePhys32Entry = 18
	HVMStartMagic         = 0x336ec578
	HVMStartInfoVersion   = 1
)

// HVMStartInfo mirrors struct hvm_start_info (version 1, 56 bytes).
type HVMStartInfo struct {
	Magic         uint32
	Version       uint32
	Flags         uint32
	NrModules     uint32
	ModlistPaddr  uint64
	CmdlinePaddr  uint64
	RSDPPaddr     uint64
	MemmapPaddr   uint64
	MemmapEntries uint32
	Reserved      uint32
}

// HVMModlistEntry mirrors struct hvm_modlist_entry (32 bytes).
type HVMModlistEntry struct {
	Paddr        uint64
	Size         uint64
	CmdlinePaddr uint64
	Reserved     uint64
}

// HVMMemmapTableEntry mirrors struct hvm_memmap_table_entry (24 bytes);
// Type uses the E820 values.
type HVMMemmapTableEntry struct {
	Addr     uint64
	Size     uint64
	Type     uint32
	Reserved uint32
}

// MP table (arch/x86/include/asm/mpspec_def.h).
const (
	MPFSignature = "_MP_"
	MPCSignature = "PCMP"
	MPSpecRev14  = 4

	MPProcessor = 0 // entry types
	MPBus       = 1
	MPIOAPIC    = 2
	MPIntSrc    = 3
	MPLIntSrc   = 4

	CPUEnabled       = 1 // mpc_cpu.cpuflag
	CPUBootProcessor = 2
	MPIOAPICUsable   = 1 // mpc_ioapic.flags

	MPIrqINT    = 0 // mp_irq_source_types
	MPIrqNMI    = 1
	MPIrqSMI    = 2
	MPIrqExtINT = 3

	MPIrqDirDefault = 0 // irqflag: conforming polarity and trigger
)

// MPFIntel mirrors struct mpf_intel, the MP floating pointer (16 bytes).
type MPFIntel struct {
	Signature     [4]byte
	PhysPtr       uint32
	Length        uint8 // in 16-byte units: 1
	Specification uint8
	Checksum      uint8
	Feature1      uint8
	Feature2      uint8
	Feature3      uint8
	Feature4      uint8
	Feature5      uint8
}

// MPCTable mirrors struct mpc_table, the MP configuration table header
// (44 bytes); its entries follow it.
type MPCTable struct {
	Signature [4]byte
	Length    uint16
	Spec      uint8
	Checksum  uint8
	OEM       [8]byte
	ProductID [12]byte
	OEMPtr    uint32
	OEMSize   uint16
	OEMCount  uint16
	LAPIC     uint32
	Reserved  uint32
}

// MPCCPU mirrors struct mpc_cpu (20 bytes).
type MPCCPU struct {
	Type        uint8
	APICID      uint8
	APICVer     uint8
	CPUFlag     uint8
	CPUFeature  uint32
	FeatureFlag uint32
	Reserved    [2]uint32
}

// MPCBus mirrors struct mpc_bus (8 bytes).
type MPCBus struct {
	Type    uint8
	BusID   uint8
	BusType [6]byte
}

// MPCIOAPIC mirrors struct mpc_ioapic (8 bytes).
type MPCIOAPIC struct {
	Type     uint8
	APICID   uint8
	APICVer  uint8
	Flags    uint8
	APICAddr uint32
}

// MPCIntSrc mirrors struct mpc_intsrc (8 bytes).
type MPCIntSrc struct {
	Type      uint8
	IRQType   uint8
	IRQFlag   uint16
	SrcBus    uint8
	SrcBusIRQ uint8
	DstAPIC   uint8
	DstIRQ    uint8
}

// MPCLIntSrc mirrors struct mpc_lintsrc (8 bytes).
type MPCLIntSrc struct {
	Type        uint8
	IRQType     uint8
	IRQFlag     uint16
	SrcBusID    uint8
	SrcBusIRQ   uint8
	DestAPIC    uint8
	DestAPICInt uint8
}
