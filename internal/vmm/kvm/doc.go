// Package kvm provides typed handles for the three kinds of KVM file
// descriptor: the system (/dev/kvm), a VM and a vCPU. Each handle owns its
// descriptor and closes it in Close; every ioctl's result is checked and
// wrapped with the ioctl's name, and ioctls interrupted by a signal are
// retried, except KVM_RUN, whose interruption (ErrInterrupted) is how a vCPU
// is kicked out of the guest.
//
// # What PVM (kvm_pvm) accepts
//
// The development and CI machines expose /dev/kvm through kvm_pvm, a
// paravirtual hypervisor that runs only PVM-built Linux kernels natively.
// Probing it with this package's tests showed:
//   - real mode, 32-bit protected mode and 64-bit long mode all run
//     (emulated in batches); port I/O, MMIO and HLT exits reach user space;
//   - KVM_GET_SUPPORTED_CPUID lacks pdpe1gb (and most of leaf 1's ECX
//     features), and a 1 GiB page in guest page tables ends in
//     KVM_EXIT_SHUTDOWN, so boot page tables use 2 MiB pages;
//   - the in-kernel irqchip, PIT, irqfd, immediate_exit, XSAVE2 (4096
//     bytes), XCRs, vCPU events, debug registers, kvmclock get/set and all
//     43 MSRs of KVM_GET_MSR_INDEX_LIST are accepted; a host write of
//     MSR_IA32_TSC does not read back as written;
//   - with the in-kernel irqchip, HLT never exits to user space (KVM handles
//     it by sleeping until an interrupt, forever with interrupts off), as on
//     hardware KVM, so guests end by a reset or port write instead.
package kvm
