package uffd_test

import "unsafe"

// addrOfSlice returns the address of b's first byte; b is an mmap the test
// keeps alive.
func addrOfSlice(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }
