package kvm

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	abi "github.com/thawvm/thaw/internal/abi/kvm"
)

// runSize is sizeof(struct kvm_run).
const runSize = int(unsafe.Sizeof(abi.Run{}))

// mapRun maps the vCPU's kvm_run area. The mapping is MAP_SHARED with the
// kernel; it stays valid until munmap in VCPU.Close.
func mapRun(h handle, size int) ([]byte, *abi.Run, error) {
	var (
		mem  []byte
		merr error
	)
	if err := h.rc.Control(func(fd uintptr) {
		mem, merr = unix.Mmap(int(fd), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	}); err != nil {
		return nil, nil, err
	}
	if merr != nil {
		return nil, nil, fmt.Errorf("mmap kvm_run (%d bytes): %w", size, merr)
	}
	// Safe: mem is a page-aligned mapping of at least runSize bytes (checked
	// in CreateVM) laid out as struct kvm_run, and outlives every use of the
	// pointer because only Close unmaps it.
	return mem, (*abi.Run)(unsafe.Pointer(&mem[0])), nil
}

// exitUnion views kvm_run's exit union as T. Safe: every T passed here is
// an abi mirror no larger than the 256-byte union (asserted in abi/kvm),
// and the union sits at an 8-byte-aligned offset of the page-aligned run
// area.
func exitUnion[T any](r *abi.Run) *T {
	return (*T)(unsafe.Pointer(&r.Exit[0]))
}

// msrBuf is a struct kvm_msrs with room for n entries, as []uint64 so the
// header and entries are 8-byte aligned.
func msrBuf(n int) ([]uint64, []abi.MSREntry) {
	buf := make([]uint64, 1+2*n)
	// Safe: the header (abi.MSRsHeader) is 8 bytes, each entry 16, so
	// entries start at buf[1] and end exactly at the end of buf.
	hdr := (*abi.MSRsHeader)(unsafe.Pointer(&buf[0]))
	hdr.NMSRs = uint32(n)
	if n == 0 {
		return buf, nil
	}
	return buf, unsafe.Slice((*abi.MSREntry)(unsafe.Pointer(&buf[1])), n)
}

func (h handle) ioctlSlice64(req uintptr, buf []uint64) (uintptr, error) {
	return h.ioctl(req, unsafe.Pointer(&buf[0]))
}

func (h handle) ioctlSlice32(req uintptr, buf []uint32) (uintptr, error) {
	return h.ioctl(req, unsafe.Pointer(&buf[0]))
}

func (h handle) ioctlBytes(req uintptr, buf []byte) (uintptr, error) {
	return h.ioctl(req, unsafe.Pointer(&buf[0]))
}

// cpuidBuf is a struct kvm_cpuid2 with room for n entries.
func cpuidBuf(n int) ([]uint64, *abi.CPUID2Header, []abi.CPUIDEntry2) {
	const entryWords = int(unsafe.Sizeof(abi.CPUIDEntry2{})) / 8
	buf := make([]uint64, 1+n*entryWords)
	// Safe: the 8-byte header is followed by n 40-byte entries, which is
	// exactly len(buf)*8 bytes.
	hdr := (*abi.CPUID2Header)(unsafe.Pointer(&buf[0]))
	hdr.Nent = uint32(n)
	return buf, hdr, unsafe.Slice((*abi.CPUIDEntry2)(unsafe.Pointer(&buf[1])), n)
}
