package memory

import "unsafe"

// HostAddr returns the host virtual address of a region's mapping, what
// KVM_SET_USER_MEMORY_REGION and the userfaultfd handshake need. Safe: the
// address is only handed to the kernel; the mapping stays in place until
// Memory.Close, which must come after the VM is gone.
func (r Region) HostAddr() uint64 {
	if len(r.Host) == 0 {
		return 0
	}
	return uint64(uintptr(unsafe.Pointer(&r.Host[0])))
}
