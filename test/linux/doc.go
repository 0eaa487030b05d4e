// Package linux holds the end-to-end proofs that thaw-vmm runs the real
// minimal Linux guest (guest/kernel): boot to init, a clean exit on a
// guest reboot, and pause, Full snapshot and restore with the File and
// Uffd memory backends. The test builds a payload (thaw-vmm, the driver
// in ./driver, the guest kernel and an initramfs holding ./guestinit) and
// runs it through nested.Test: directly on a host with hardware KVM, in the
// nested harness's L1 elsewhere.
package linux
