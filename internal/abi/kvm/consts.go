package kvm

// Capabilities for KVM_CHECK_EXTENSION (include/uapi/linux/kvm.h).
const (
	KVM_CAP_IRQCHIP            = 0
	KVM_CAP_USER_MEMORY        = 3
	KVM_CAP_SET_TSS_ADDR       = 4
	KVM_CAP_EXT_CPUID          = 7
	KVM_CAP_NR_VCPUS           = 9
	KVM_CAP_NR_MEMSLOTS        = 10
	KVM_CAP_MP_STATE           = 14
	KVM_CAP_SYNC_MMU           = 16
	KVM_CAP_IRQ_ROUTING        = 25
	KVM_CAP_ADJUST_CLOCK       = 39
	KVM_CAP_VCPU_EVENTS        = 41
	KVM_CAP_IRQFD              = 32
	KVM_CAP_PIT2               = 33
	KVM_CAP_PIT_STATE2         = 35
	KVM_CAP_IOEVENTFD          = 36
	KVM_CAP_DEBUGREGS          = 50
	KVM_CAP_XSAVE              = 55
	KVM_CAP_XCRS               = 56
	KVM_CAP_TSC_CONTROL        = 60
	KVM_CAP_GET_TSC_KHZ        = 61
	KVM_CAP_MAX_VCPUS          = 66
	KVM_CAP_TSC_DEADLINE_TIMER = 72
	KVM_CAP_KVMCLOCK_CTRL      = 76
	KVM_CAP_SPLIT_IRQCHIP      = 121
	KVM_CAP_X2APIC_API         = 129
	KVM_CAP_IMMEDIATE_EXIT     = 136
	KVM_CAP_XSAVE2             = 208
)

// Exit reasons in kvm_run.exit_reason (include/uapi/linux/kvm.h).
const (
	KVM_EXIT_UNKNOWN                          = 0
	KVM_EXIT_EXCEPTION                        = 1
	KVM_EXIT_IO                               = 2
	KVM_EXIT_HYPERCALL                        = 3
	KVM_EXIT_DEBUG                            = 4
	KVM_EXIT_HLT                              = 5
	KVM_EXIT_MMIO                             = 6
	KVM_EXIT_IRQ_WINDOW_OPEN                  = 7
	KVM_EXIT_SHUTDOWN                         = 8
	KVM_EXIT_FAIL_ENTRY                       = 9
	KVM_EXIT_INTR                             = 10
	KVM_EXIT_SET_TPR                          = 11
	KVM_EXIT_TPR_ACCESS                       = 12
	KVM_EXIT_NMI                              = 16
	KVM_EXIT_INTERNAL_ERROR                   = 17
	KVM_EXIT_SYSTEM_EVENT                     = 24
	KVM_EXIT_IOAPIC_EOI                       = 26
	KVM_EXIT_X86_RDMSR                        = 29
	KVM_EXIT_X86_WRMSR                        = 30
	KVM_EXIT_DIRTY_RING_FULL                  = 31
	KVM_EXIT_X86_BUS_LOCK                     = 33
	KVM_EXIT_NOTIFY                           = 37
	KVM_EXIT_IO_IN                            = 0 // kvm_run.io.direction
	KVM_EXIT_IO_OUT                           = 1 // kvm_run.io.direction
	KVM_INTERNAL_ERROR_EMULATION              = 1
	KVM_INTERNAL_ERROR_SIMUL_EX               = 2
	KVM_INTERNAL_ERROR_DELIVERY_EV            = 3
	KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4
	KVM_SYSTEM_EVENT_SHUTDOWN                 = 1
	KVM_SYSTEM_EVENT_RESET                    = 2
	KVM_SYSTEM_EVENT_CRASH                    = 3
)

// MP states for KVM_GET_MP_STATE / KVM_SET_MP_STATE (include/uapi/linux/kvm.h).
const (
	KVM_MP_STATE_RUNNABLE      = 0
	KVM_MP_STATE_UNINITIALIZED = 1
	KVM_MP_STATE_INIT_RECEIVED = 2
	KVM_MP_STATE_HALTED        = 3
	KVM_MP_STATE_SIPI_RECEIVED = 4
)

// Flags and limits (include/uapi/linux/kvm.h, arch/x86/include/uapi/asm/kvm.h).
const (
	KVM_MEM_LOG_DIRTY_PAGES = 1 << 0 // kvm_userspace_memory_region.flags
	KVM_MEM_READONLY        = 1 << 1

	KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
	KVM_IRQFD_FLAG_RESAMPLE = 1 << 1

	KVM_PIT_SPEAKER_DUMMY = 1 // kvm_pit_config.flags

	KVM_CLOCK_TSC_STABLE = 2 // kvm_clock_data.flags
	KVM_CLOCK_REALTIME   = 1 << 2
	KVM_CLOCK_HOST_TSC   = 1 << 3

	KVM_VCPUEVENT_VALID_NMI_PENDING  = 0x00000001 // kvm_vcpu_events.flags
	KVM_VCPUEVENT_VALID_SIPI_VECTOR  = 0x00000002
	KVM_VCPUEVENT_VALID_SHADOW       = 0x00000004
	KVM_VCPUEVENT_VALID_SMM          = 0x00000008
	KVM_VCPUEVENT_VALID_PAYLOAD      = 0x00000010
	KVM_VCPUEVENT_VALID_TRIPLE_FAULT = 0x00000020

	KVM_IRQCHIP_PIC_MASTER = 0 // kvm_irqchip.chip_id
	KVM_IRQCHIP_PIC_SLAVE  = 1
	KVM_IRQCHIP_IOAPIC     = 2

	KVM_NR_INTERRUPTS     = 256
	KVM_IOAPIC_NUM_PINS   = 24
	KVM_APIC_REG_SIZE     = 0x400
	KVM_MAX_XCRS          = 16
	KVM_XSAVE_LEGACY_SIZE = 4096 // sizeof(struct kvm_xsave) without the flexible tail

	KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0 // the kernel's spelling
	KVM_CPUID_FLAG_STATEFUL_FUNC    = 1 << 1
	KVM_CPUID_FLAG_STATE_READ_NEXT  = 1 << 2
)
