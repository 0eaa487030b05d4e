// Package e2e holds end-to-end tests that boot guests through the real
// thaw-vmm binary and its Firecracker-compatible API, on the host's
// /dev/kvm: the freestanding probe guest everywhere (PVM included), and
// Linux guests where the nested harness provides a KVM that runs them.
package e2e
