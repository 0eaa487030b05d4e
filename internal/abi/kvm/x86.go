package kvm

// Control-register and EFER bits (arch/x86/include/uapi/asm/processor-flags.h,
// arch/x86/include/asm/msr-index.h).
const (
	X86_CR0_PE = 1 << 0
	X86_CR0_MP = 1 << 1
	X86_CR0_ET = 1 << 4
	X86_CR0_NE = 1 << 5
	X86_CR0_WP = 1 << 16
	X86_CR0_AM = 1 << 18
	X86_CR0_PG = 1 << 31

	X86_CR4_PAE        = 1 << 5
	X86_CR4_PGE        = 1 << 7
	X86_CR4_OSFXSR     = 1 << 9
	X86_CR4_OSXMMEXCPT = 1 << 10
	X86_CR4_OSXSAVE    = 1 << 18

	EFER_SCE = 1 << 0
	EFER_LME = 1 << 8
	EFER_LMA = 1 << 10
	EFER_NX  = 1 << 11

	X86_EFLAGS_FIXED = 1 << 1 // bit 1 always reads as one
	X86_EFLAGS_IF    = 1 << 9
)

// MSR indices a VMM programs at boot or saves in a snapshot
// (arch/x86/include/asm/msr-index.h, arch/x86/include/uapi/asm/kvm_para.h).
const (
	MSR_IA32_TSC                     = 0x00000010
	MSR_IA32_APICBASE                = 0x0000001b
	MSR_IA32_TSC_ADJUST              = 0x0000003b
	MSR_IA32_SYSENTER_CS             = 0x00000174
	MSR_IA32_SYSENTER_ESP            = 0x00000175
	MSR_IA32_SYSENTER_EIP            = 0x00000176
	MSR_IA32_MISC_ENABLE             = 0x000001a0
	MSR_IA32_CR_PAT                  = 0x00000277
	MSR_MTRRdefType                  = 0x000002ff
	MSR_IA32_TSC_DEADLINE            = 0x000006e0
	MSR_EFER                         = 0xc0000080
	MSR_STAR                         = 0xc0000081
	MSR_LSTAR                        = 0xc0000082
	MSR_CSTAR                        = 0xc0000083
	MSR_SYSCALL_MASK                 = 0xc0000084
	MSR_FS_BASE                      = 0xc0000100
	MSR_GS_BASE                      = 0xc0000101
	MSR_KERNEL_GS_BASE               = 0xc0000102
	MSR_TSC_AUX                      = 0xc0000103
	MSR_KVM_WALL_CLOCK               = 0x00000011
	MSR_KVM_SYSTEM_TIME              = 0x00000012
	MSR_KVM_WALL_CLOCK_NEW           = 0x4b564d00
	MSR_KVM_SYSTEM_TIME_NEW          = 0x4b564d01
	MSR_KVM_ASYNC_PF_EN              = 0x4b564d02
	MSR_KVM_STEAL_TIME               = 0x4b564d03
	MSR_KVM_PV_EOI_EN                = 0x4b564d04
	MSR_KVM_POLL_CONTROL             = 0x4b564d05
	MSR_KVM_ASYNC_PF_INT             = 0x4b564d06
	MSR_IA32_MISC_ENABLE_FAST_STRING = 1 << 0 // a bit in MSR_IA32_MISC_ENABLE
)
