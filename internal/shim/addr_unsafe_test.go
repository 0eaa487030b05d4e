package shim_test

import "unsafe"

// addrOf returns the address of b's first byte, for a handshake. b is an
// anonymous mapping the fake VMM never unmaps, so the address stays valid.
func addrOf(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }
