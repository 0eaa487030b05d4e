package uffd

import "unsafe"

// Compile-time size checks: each array has length zero only when the Go
// struct has exactly the kernel's size, otherwise the constant index is out
// of range (or negative) and the build fails.
var (
	_ = [1]struct{}{}[unsafe.Sizeof(UffdMsg{})-32]
	_ = [1]struct{}{}[32-unsafe.Sizeof(UffdMsg{})]
	_ = [1]struct{}{}[unsafe.Sizeof(UffdioApi{})-24]
	_ = [1]struct{}{}[24-unsafe.Sizeof(UffdioApi{})]
	_ = [1]struct{}{}[unsafe.Sizeof(UffdioRange{})-16]
	_ = [1]struct{}{}[16-unsafe.Sizeof(UffdioRange{})]
	_ = [1]struct{}{}[unsafe.Sizeof(UffdioRegister{})-32]
	_ = [1]struct{}{}[32-unsafe.Sizeof(UffdioRegister{})]
	_ = [1]struct{}{}[unsafe.Sizeof(UffdioCopy{})-40]
	_ = [1]struct{}{}[40-unsafe.Sizeof(UffdioCopy{})]
	_ = [1]struct{}{}[unsafe.Sizeof(UffdioZeropage{})-32]
	_ = [1]struct{}{}[32-unsafe.Sizeof(UffdioZeropage{})]
	_ = [1]struct{}{}[unsafe.Sizeof(UffdioWriteprotect{})-24]
	_ = [1]struct{}{}[24-unsafe.Sizeof(UffdioWriteprotect{})]
	_ = [1]struct{}{}[unsafe.Sizeof(UffdioContinue{})-32]
	_ = [1]struct{}{}[32-unsafe.Sizeof(UffdioContinue{})]
)
