// Package vmm assembles a microVM from the pieces under internal/vmm: KVM
// handles, guest memory, the boot loader, the legacy devices (8250 serial,
// i8042) and, through its MMIO bus, virtio devices; it runs one locked OS
// thread per vCPU and turns their exits into device accesses. Machine is
// the VM as the Firecracker-compatible API server drives it: configure,
// start, pause, resume, send Ctrl+Alt+Del, and wait for the guest to end.
package vmm
