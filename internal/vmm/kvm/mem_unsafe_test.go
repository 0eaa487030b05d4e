package kvm

import (
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// guestRAM maps size bytes of anonymous memory for a test VM and returns
// it with its host address; the mapping is removed when the test ends.
func guestRAM(t *testing.T, size int) ([]byte, uint64) {
	t.Helper()
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		t.Fatalf("mmap guest RAM: %v", err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	// Safe: the address is only handed to KVM, which accesses the mapping
	// through the host page tables; the mapping outlives the VM (the
	// cleanup runs after the VM's, registered later).
	return mem, uint64(uintptr(unsafe.Pointer(&mem[0])))
}
