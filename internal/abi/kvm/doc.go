// Package kvm mirrors the x86-64 KVM user-space ABI: ioctl numbers,
// capability and exit-reason constants, and the structs the ioctls take, all
// in the kernel's spelling (include/uapi/linux/kvm.h and
// arch/x86/include/uapi/asm/kvm.h), plus the x86 architectural constants a
// VMM needs to set up a vCPU (control-register bits, MSR indices).
//
// The package holds no logic. Every struct's size is asserted at compile time
// (sizes_unsafe.go) and every ioctl number is checked against the _IOC
// formula by a table test, so a wrong field or number cannot go unnoticed.
package kvm
