// Package snapshot takes and restores thaw-vmm snapshots: the KVM state of
// the VM and its vCPUs (into internal/vmm/vmstate), and guest memory (the
// memory file: the regions, raw, concatenated, Firecracker's format),
// loaded back either by mapping the file privately (the File backend) or
// through a userfaultfd page server (the Uffd backend, Firecracker's
// handshake, sent with internal/uffd).
//
// # What PVM (kvm_pvm) accepts
//
// Measured on the development machine's /dev/kvm (kvm_pvm) by this
// package's tests: every GET/SET a snapshot needs is accepted —
// KVM_GET/SET_CPUID2, MP state, regs, sregs, XSAVE2 (4096 bytes), XCRs,
// debug registers, LAPIC, vCPU events, all 43 MSRs of
// KVM_GET_MSR_INDEX_LIST (kvm-clock and MSR_IA32_TSC among them), PIC
// master/slave, IOAPIC, PIT2 and KVM_GET/SET_CLOCK — and a probe guest
// restored into a fresh VM continues exactly where it stopped.
// KVM_CAP_TSC_CONTROL is 0 there: KVM_SET_TSC_KHZ with the current
// frequency succeeds, with another one it fails with EINVAL (and yet reads
// back the new value), so RestoreVCPU sets the frequency only when it
// differs and reports the failure, naming both frequencies.
package snapshot
