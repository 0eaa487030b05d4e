package kvm

// Run mirrors struct kvm_run, the page shared with the kernel through the
// vCPU fd's mmap (include/uapi/linux/kvm.h). Exit holds the per-exit union;
// its members are the Run* types below, all at offset 0 of Exit.
type Run struct {
	RequestInterruptWindow     uint8
	ImmediateExit              uint8
	Padding1                   [6]uint8
	ExitReason                 uint32
	ReadyForInterruptInjection uint8
	IfFlag                     uint8
	Flags                      uint16
	CR8                        uint64
	APICBase                   uint64
	Exit                       [256]byte
	KVMValidRegs               uint64
	KVMDirtyRegs               uint64
	S                          [2048]byte
}

// RunIO mirrors kvm_run.io (KVM_EXIT_IO). The data lives in the kvm_run
// page at DataOffset, Count items of Size bytes.
type RunIO struct {
	Direction  uint8
	Size       uint8
	Port       uint16
	Count      uint32
	DataOffset uint64
}

// RunMMIO mirrors kvm_run.mmio (KVM_EXIT_MMIO).
type RunMMIO struct {
	PhysAddr uint64
	Data     [8]uint8
	Len      uint32
	IsWrite  uint8
	Pad      [3]uint8
}

// RunFailEntry mirrors kvm_run.fail_entry (KVM_EXIT_FAIL_ENTRY).
type RunFailEntry struct {
	HardwareEntryFailureReason uint64
	CPU                        uint32
	Pad                        uint32
}

// RunInternal mirrors kvm_run.internal (KVM_EXIT_INTERNAL_ERROR).
type RunInternal struct {
	Suberror uint32
	NData    uint32
	Data     [16]uint64
}

// RunSystemEvent mirrors kvm_run.system_event (KVM_EXIT_SYSTEM_EVENT).
type RunSystemEvent struct {
	Type  uint32
	NData uint32
	Data  [16]uint64
}

// RunHW mirrors kvm_run.hw (KVM_EXIT_UNKNOWN).
type RunHW struct {
	HardwareExitReason uint64
}
