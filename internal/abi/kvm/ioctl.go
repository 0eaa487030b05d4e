package kvm

// KVMIO is the ioctl type byte of every KVM ioctl (include/uapi/linux/kvm.h).
const KVMIO = 0xAE

// APIVersion is the only KVM API version in existence; KVM_GET_API_VERSION
// must return it.
const APIVersion = 12

// System ioctls, issued on the /dev/kvm fd (include/uapi/linux/kvm.h).
const (
	KVM_GET_API_VERSION            = 0xae00     // _IO(KVMIO, 0x00)
	KVM_CREATE_VM                  = 0xae01     // _IO(KVMIO, 0x01)
	KVM_GET_MSR_INDEX_LIST         = 0xc004ae02 // _IOWR(KVMIO, 0x02, struct kvm_msr_list)
	KVM_CHECK_EXTENSION            = 0xae03     // _IO(KVMIO, 0x03)
	KVM_GET_VCPU_MMAP_SIZE         = 0xae04     // _IO(KVMIO, 0x04)
	KVM_GET_SUPPORTED_CPUID        = 0xc008ae05 // _IOWR(KVMIO, 0x05, struct kvm_cpuid2)
	KVM_GET_MSR_FEATURE_INDEX_LIST = 0xc004ae0a // _IOWR(KVMIO, 0x0a, struct kvm_msr_list)
)

// VM ioctls, issued on a VM fd (include/uapi/linux/kvm.h).
const (
	KVM_CREATE_VCPU            = 0xae41     // _IO(KVMIO, 0x41)
	KVM_GET_DIRTY_LOG          = 0x4010ae42 // _IOW(KVMIO, 0x42, struct kvm_dirty_log)
	KVM_SET_USER_MEMORY_REGION = 0x4020ae46 // _IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)
	KVM_SET_TSS_ADDR           = 0xae47     // _IO(KVMIO, 0x47)
	KVM_SET_IDENTITY_MAP_ADDR  = 0x4008ae48 // _IOW(KVMIO, 0x48, __u64)
	KVM_CREATE_IRQCHIP         = 0xae60     // _IO(KVMIO, 0x60)
	KVM_IRQ_LINE               = 0x4008ae61 // _IOW(KVMIO, 0x61, struct kvm_irq_level)
	KVM_GET_IRQCHIP            = 0xc208ae62 // _IOWR(KVMIO, 0x62, struct kvm_irqchip)
	KVM_SET_IRQCHIP            = 0x8208ae63 // _IOR(KVMIO, 0x63, struct kvm_irqchip)
	KVM_IRQ_LINE_STATUS        = 0xc008ae67 // _IOWR(KVMIO, 0x67, struct kvm_irq_level)
	KVM_SET_GSI_ROUTING        = 0x4008ae6a // _IOW(KVMIO, 0x6a, struct kvm_irq_routing)
	KVM_IRQFD                  = 0x4020ae76 // _IOW(KVMIO, 0x76, struct kvm_irqfd)
	KVM_CREATE_PIT2            = 0x4040ae77 // _IOW(KVMIO, 0x77, struct kvm_pit_config)
	KVM_SET_BOOT_CPU_ID        = 0xae78     // _IO(KVMIO, 0x78)
	KVM_SET_CLOCK              = 0x4030ae7b // _IOW(KVMIO, 0x7b, struct kvm_clock_data)
	KVM_GET_CLOCK              = 0x8030ae7c // _IOR(KVMIO, 0x7c, struct kvm_clock_data)
	KVM_GET_PIT2               = 0x8070ae9f // _IOR(KVMIO, 0x9f, struct kvm_pit_state2)
	KVM_SET_PIT2               = 0x4070aea0 // _IOW(KVMIO, 0xa0, struct kvm_pit_state2)
	KVM_ENABLE_CAP             = 0x4068aea3 // _IOW(KVMIO, 0xa3, struct kvm_enable_cap); also a vCPU ioctl
)

// vCPU ioctls, issued on a vCPU fd (include/uapi/linux/kvm.h).
const (
	KVM_RUN             = 0xae80     // _IO(KVMIO, 0x80)
	KVM_GET_REGS        = 0x8090ae81 // _IOR(KVMIO, 0x81, struct kvm_regs)
	KVM_SET_REGS        = 0x4090ae82 // _IOW(KVMIO, 0x82, struct kvm_regs)
	KVM_GET_SREGS       = 0x8138ae83 // _IOR(KVMIO, 0x83, struct kvm_sregs)
	KVM_SET_SREGS       = 0x4138ae84 // _IOW(KVMIO, 0x84, struct kvm_sregs)
	KVM_GET_MSRS        = 0xc008ae88 // _IOWR(KVMIO, 0x88, struct kvm_msrs)
	KVM_SET_MSRS        = 0x4008ae89 // _IOW(KVMIO, 0x89, struct kvm_msrs)
	KVM_SET_SIGNAL_MASK = 0x4004ae8b // _IOW(KVMIO, 0x8b, struct kvm_signal_mask)
	KVM_GET_FPU         = 0x81a0ae8c // _IOR(KVMIO, 0x8c, struct kvm_fpu)
	KVM_SET_FPU         = 0x41a0ae8d // _IOW(KVMIO, 0x8d, struct kvm_fpu)
	KVM_GET_LAPIC       = 0x8400ae8e // _IOR(KVMIO, 0x8e, struct kvm_lapic_state)
	KVM_SET_LAPIC       = 0x4400ae8f // _IOW(KVMIO, 0x8f, struct kvm_lapic_state)
	KVM_SET_CPUID2      = 0x4008ae90 // _IOW(KVMIO, 0x90, struct kvm_cpuid2)
	KVM_GET_CPUID2      = 0xc008ae91 // _IOWR(KVMIO, 0x91, struct kvm_cpuid2)
	KVM_GET_MP_STATE    = 0x8004ae98 // _IOR(KVMIO, 0x98, struct kvm_mp_state)
	KVM_SET_MP_STATE    = 0x4004ae99 // _IOW(KVMIO, 0x99, struct kvm_mp_state)
	KVM_GET_VCPU_EVENTS = 0x8040ae9f // _IOR(KVMIO, 0x9f, struct kvm_vcpu_events)
	KVM_SET_VCPU_EVENTS = 0x4040aea0 // _IOW(KVMIO, 0xa0, struct kvm_vcpu_events)
	KVM_GET_DEBUGREGS   = 0x8080aea1 // _IOR(KVMIO, 0xa1, struct kvm_debugregs)
	KVM_SET_DEBUGREGS   = 0x4080aea2 // _IOW(KVMIO, 0xa2, struct kvm_debugregs)
	KVM_SET_TSC_KHZ     = 0xaea2     // _IO(KVMIO, 0xa2)
	KVM_GET_TSC_KHZ     = 0xaea3     // _IO(KVMIO, 0xa3)
	KVM_GET_XSAVE       = 0x9000aea4 // _IOR(KVMIO, 0xa4, struct kvm_xsave)
	KVM_SET_XSAVE       = 0x5000aea5 // _IOW(KVMIO, 0xa5, struct kvm_xsave)
	KVM_GET_XCRS        = 0x8188aea6 // _IOR(KVMIO, 0xa6, struct kvm_xcrs)
	KVM_SET_XCRS        = 0x4188aea7 // _IOW(KVMIO, 0xa7, struct kvm_xcrs)
	KVM_KVMCLOCK_CTRL   = 0xaead     // _IO(KVMIO, 0xad)
	KVM_GET_XSAVE2      = 0x9000aecf // _IOR(KVMIO, 0xcf, struct kvm_xsave); size from KVM_CAP_XSAVE2
)
