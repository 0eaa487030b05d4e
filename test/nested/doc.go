// Package nested holds the nested harness's end-to-end proof, on a KVM that
// runs normal Linux guests (L1 here, the host on hardware KVM): our own KVM
// code's tests pass there, and thaw-vmm boots the guest kernel to init. The
// harness and its own tests are internal/nested.
package nested
