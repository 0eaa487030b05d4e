package kvm

import "unsafe"

// Compile-time size checks against the kernel's sizeof(struct ...) on
// x86-64: a mismatch makes the array lengths differ and the build fail. The
// conversion is only unsafe.Sizeof on values, which reads no memory.
var (
	_ [144]byte  = [unsafe.Sizeof(Regs{})]byte{}
	_ [24]byte   = [unsafe.Sizeof(Segment{})]byte{}
	_ [16]byte   = [unsafe.Sizeof(DTable{})]byte{}
	_ [312]byte  = [unsafe.Sizeof(Sregs{})]byte{}
	_ [416]byte  = [unsafe.Sizeof(FPU{})]byte{}
	_ [4096]byte = [unsafe.Sizeof(XSave{})]byte{}
	_ [16]byte   = [unsafe.Sizeof(XCR{})]byte{}
	_ [392]byte  = [unsafe.Sizeof(XCRs{})]byte{}
	_ [16]byte   = [unsafe.Sizeof(MSREntry{})]byte{}
	_ [8]byte    = [unsafe.Sizeof(MSRsHeader{})]byte{}
	_ [4]byte    = [unsafe.Sizeof(MSRListHeader{})]byte{}
	_ [1024]byte = [unsafe.Sizeof(LAPICState{})]byte{}
	_ [4]byte    = [unsafe.Sizeof(MPState{})]byte{}
	_ [64]byte   = [unsafe.Sizeof(VCPUEvents{})]byte{}
	_ [128]byte  = [unsafe.Sizeof(DebugRegs{})]byte{}
	_ [40]byte   = [unsafe.Sizeof(CPUIDEntry2{})]byte{}
	_ [8]byte    = [unsafe.Sizeof(CPUID2Header{})]byte{}
	_ [16]byte   = [unsafe.Sizeof(PICState{})]byte{}
	_ [216]byte  = [unsafe.Sizeof(IOAPICState{})]byte{}
	_ [520]byte  = [unsafe.Sizeof(IRQChip{})]byte{}
	_ [24]byte   = [unsafe.Sizeof(PITChannelState{})]byte{}
	_ [112]byte  = [unsafe.Sizeof(PITState2{})]byte{}
	_ [64]byte   = [unsafe.Sizeof(PITConfig{})]byte{}
	_ [48]byte   = [unsafe.Sizeof(ClockData{})]byte{}
	_ [32]byte   = [unsafe.Sizeof(IRQFD{})]byte{}
	_ [8]byte    = [unsafe.Sizeof(IRQLevel{})]byte{}
	_ [32]byte   = [unsafe.Sizeof(UserspaceMemoryRegion{})]byte{}
	_ [104]byte  = [unsafe.Sizeof(EnableCap{})]byte{}
	_ [16]byte   = [unsafe.Sizeof(DirtyLog{})]byte{}
	_ [4]byte    = [unsafe.Sizeof(SignalMaskHeader{})]byte{}
	_ [2352]byte = [unsafe.Sizeof(Run{})]byte{}
	_ [16]byte   = [unsafe.Sizeof(RunIO{})]byte{}
	_ [24]byte   = [unsafe.Sizeof(RunMMIO{})]byte{}
	_ [16]byte   = [unsafe.Sizeof(RunFailEntry{})]byte{}
	_ [136]byte  = [unsafe.Sizeof(RunInternal{})]byte{}
	_ [136]byte  = [unsafe.Sizeof(RunSystemEvent{})]byte{}

	// Offsets the kernel relies on in struct kvm_run and kvm_vcpu_events.
	_ [8]byte   = [unsafe.Offsetof(Run{}.ExitReason)]byte{}
	_ [32]byte  = [unsafe.Offsetof(Run{}.Exit)]byte{}
	_ [288]byte = [unsafe.Offsetof(Run{}.KVMValidRegs)]byte{}
	_ [304]byte = [unsafe.Offsetof(Run{}.S)]byte{}
	_ [16]byte  = [unsafe.Offsetof(VCPUEvents{}.SIPIVector)]byte{}
	_ [28]byte  = [unsafe.Offsetof(VCPUEvents{}.TripleFault)]byte{}
	_ [55]byte  = [unsafe.Offsetof(VCPUEvents{}.ExceptionHasPayload)]byte{}
	_ [56]byte  = [unsafe.Offsetof(VCPUEvents{}.ExceptionPayload)]byte{}
	_ [16]byte  = [unsafe.Offsetof(ClockData{}.Realtime)]byte{}
)
