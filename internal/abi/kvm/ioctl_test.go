package kvm

import (
	"reflect"
	"testing"
)

// ioc computes _IOC(dir, type, nr, size) as include/uapi/asm-generic/ioctl.h
// defines it for x86: nr in bits 0-7, type in 8-15, size in 16-29, direction
// in 30-31.
func ioc(dir, typ, nr, size uintptr) uintptr {
	return dir<<30 | size<<16 | typ<<8 | nr
}

const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
)

func TestIoctlNumbers(t *testing.T) {
	size := func(v any) uintptr { return reflect.TypeOf(v).Size() }
	tests := []struct {
		name string
		got  uintptr
		dir  uintptr
		nr   uintptr
		size uintptr
	}{
		{"KVM_GET_API_VERSION", KVM_GET_API_VERSION, iocNone, 0x00, 0},
		{"KVM_CREATE_VM", KVM_CREATE_VM, iocNone, 0x01, 0},
		{"KVM_GET_MSR_INDEX_LIST", KVM_GET_MSR_INDEX_LIST, iocRead | iocWrite, 0x02, size(MSRListHeader{})},
		{"KVM_CHECK_EXTENSION", KVM_CHECK_EXTENSION, iocNone, 0x03, 0},
		{"KVM_GET_VCPU_MMAP_SIZE", KVM_GET_VCPU_MMAP_SIZE, iocNone, 0x04, 0},
		{"KVM_GET_SUPPORTED_CPUID", KVM_GET_SUPPORTED_CPUID, iocRead | iocWrite, 0x05, size(CPUID2Header{})},
		{"KVM_GET_MSR_FEATURE_INDEX_LIST", KVM_GET_MSR_FEATURE_INDEX_LIST, iocRead | iocWrite, 0x0a, size(MSRListHeader{})},
		{"KVM_CREATE_VCPU", KVM_CREATE_VCPU, iocNone, 0x41, 0},
		{"KVM_GET_DIRTY_LOG", KVM_GET_DIRTY_LOG, iocWrite, 0x42, size(DirtyLog{})},
		{"KVM_SET_USER_MEMORY_REGION", KVM_SET_USER_MEMORY_REGION, iocWrite, 0x46, size(UserspaceMemoryRegion{})},
		{"KVM_SET_TSS_ADDR", KVM_SET_TSS_ADDR, iocNone, 0x47, 0},
		{"KVM_SET_IDENTITY_MAP_ADDR", KVM_SET_IDENTITY_MAP_ADDR, iocWrite, 0x48, size(uint64(0))},
		{"KVM_CREATE_IRQCHIP", KVM_CREATE_IRQCHIP, iocNone, 0x60, 0},
		{"KVM_IRQ_LINE", KVM_IRQ_LINE, iocWrite, 0x61, size(IRQLevel{})},
		{"KVM_GET_IRQCHIP", KVM_GET_IRQCHIP, iocRead | iocWrite, 0x62, size(IRQChip{})},
		{"KVM_SET_IRQCHIP", KVM_SET_IRQCHIP, iocRead, 0x63, size(IRQChip{})},
		{"KVM_IRQ_LINE_STATUS", KVM_IRQ_LINE_STATUS, iocRead | iocWrite, 0x67, size(IRQLevel{})},
		{"KVM_SET_GSI_ROUTING", KVM_SET_GSI_ROUTING, iocWrite, 0x6a, 8},
		{"KVM_IRQFD", KVM_IRQFD, iocWrite, 0x76, size(IRQFD{})},
		{"KVM_CREATE_PIT2", KVM_CREATE_PIT2, iocWrite, 0x77, size(PITConfig{})},
		{"KVM_SET_BOOT_CPU_ID", KVM_SET_BOOT_CPU_ID, iocNone, 0x78, 0},
		{"KVM_SET_CLOCK", KVM_SET_CLOCK, iocWrite, 0x7b, size(ClockData{})},
		{"KVM_GET_CLOCK", KVM_GET_CLOCK, iocRead, 0x7c, size(ClockData{})},
		{"KVM_GET_PIT2", KVM_GET_PIT2, iocRead, 0x9f, size(PITState2{})},
		{"KVM_SET_PIT2", KVM_SET_PIT2, iocWrite, 0xa0, size(PITState2{})},
		{"KVM_ENABLE_CAP", KVM_ENABLE_CAP, iocWrite, 0xa3, size(EnableCap{})},
		{"KVM_RUN", KVM_RUN, iocNone, 0x80, 0},
		{"KVM_GET_REGS", KVM_GET_REGS, iocRead, 0x81, size(Regs{})},
		{"KVM_SET_REGS", KVM_SET_REGS, iocWrite, 0x82, size(Regs{})},
		{"KVM_GET_SREGS", KVM_GET_SREGS, iocRead, 0x83, size(Sregs{})},
		{"KVM_SET_SREGS", KVM_SET_SREGS, iocWrite, 0x84, size(Sregs{})},
		{"KVM_GET_MSRS", KVM_GET_MSRS, iocRead | iocWrite, 0x88, size(MSRsHeader{})},
		{"KVM_SET_MSRS", KVM_SET_MSRS, iocWrite, 0x89, size(MSRsHeader{})},
		{"KVM_SET_SIGNAL_MASK", KVM_SET_SIGNAL_MASK, iocWrite, 0x8b, size(SignalMaskHeader{})},
		{"KVM_GET_FPU", KVM_GET_FPU, iocRead, 0x8c, size(FPU{})},
		{"KVM_SET_FPU", KVM_SET_FPU, iocWrite, 0x8d, size(FPU{})},
		{"KVM_GET_LAPIC", KVM_GET_LAPIC, iocRead, 0x8e, size(LAPICState{})},
		{"KVM_SET_LAPIC", KVM_SET_LAPIC, iocWrite, 0x8f, size(LAPICState{})},
		{"KVM_SET_CPUID2", KVM_SET_CPUID2, iocWrite, 0x90, size(CPUID2Header{})},
		{"KVM_GET_CPUID2", KVM_GET_CPUID2, iocRead | iocWrite, 0x91, size(CPUID2Header{})},
		{"KVM_GET_MP_STATE", KVM_GET_MP_STATE, iocRead, 0x98, size(MPState{})},
		{"KVM_SET_MP_STATE", KVM_SET_MP_STATE, iocWrite, 0x99, size(MPState{})},
		{"KVM_GET_VCPU_EVENTS", KVM_GET_VCPU_EVENTS, iocRead, 0x9f, size(VCPUEvents{})},
		{"KVM_SET_VCPU_EVENTS", KVM_SET_VCPU_EVENTS, iocWrite, 0xa0, size(VCPUEvents{})},
		{"KVM_GET_DEBUGREGS", KVM_GET_DEBUGREGS, iocRead, 0xa1, size(DebugRegs{})},
		{"KVM_SET_DEBUGREGS", KVM_SET_DEBUGREGS, iocWrite, 0xa2, size(DebugRegs{})},
		{"KVM_SET_TSC_KHZ", KVM_SET_TSC_KHZ, iocNone, 0xa2, 0},
		{"KVM_GET_TSC_KHZ", KVM_GET_TSC_KHZ, iocNone, 0xa3, 0},
		{"KVM_GET_XSAVE", KVM_GET_XSAVE, iocRead, 0xa4, size(XSave{})},
		{"KVM_SET_XSAVE", KVM_SET_XSAVE, iocWrite, 0xa5, size(XSave{})},
		{"KVM_GET_XCRS", KVM_GET_XCRS, iocRead, 0xa6, size(XCRs{})},
		{"KVM_SET_XCRS", KVM_SET_XCRS, iocWrite, 0xa7, size(XCRs{})},
		{"KVM_KVMCLOCK_CTRL", KVM_KVMCLOCK_CTRL, iocNone, 0xad, 0},
		{"KVM_GET_XSAVE2", KVM_GET_XSAVE2, iocRead, 0xcf, size(XSave{})},
	}
	for _, tt := range tests {
		want := ioc(tt.dir, KVMIO, tt.nr, tt.size)
		if tt.got != want {
			t.Errorf("%s = %#x, want %#x (_IOC(%d, KVMIO, %#x, %d))", tt.name, tt.got, want, tt.dir, tt.nr, tt.size)
		}
	}
}

// TestStructSizes repeats the compile-time size checks at run time so a
// failure names the struct; the numbers are the kernel's sizeof on x86-64.
func TestStructSizes(t *testing.T) {
	tests := []struct {
		name string
		v    any
		want uintptr
	}{
		{"kvm_regs", Regs{}, 144},
		{"kvm_sregs", Sregs{}, 312},
		{"kvm_fpu", FPU{}, 416},
		{"kvm_xsave", XSave{}, 4096},
		{"kvm_xcrs", XCRs{}, 392},
		{"kvm_msr_entry", MSREntry{}, 16},
		{"kvm_lapic_state", LAPICState{}, 1024},
		{"kvm_vcpu_events", VCPUEvents{}, 64},
		{"kvm_debugregs", DebugRegs{}, 128},
		{"kvm_cpuid_entry2", CPUIDEntry2{}, 40},
		{"kvm_irqchip", IRQChip{}, 520},
		{"kvm_pic_state", PICState{}, 16},
		{"kvm_ioapic_state", IOAPICState{}, 216},
		{"kvm_pit_state2", PITState2{}, 112},
		{"kvm_clock_data", ClockData{}, 48},
		{"kvm_irqfd", IRQFD{}, 32},
		{"kvm_userspace_memory_region", UserspaceMemoryRegion{}, 32},
		{"kvm_pit_config", PITConfig{}, 64},
		{"kvm_run", Run{}, 2352},
	}
	for _, tt := range tests {
		if got := reflect.TypeOf(tt.v).Size(); got != tt.want {
			t.Errorf("sizeof(struct %s): got %d, want %d", tt.name, got, tt.want)
		}
	}
}
