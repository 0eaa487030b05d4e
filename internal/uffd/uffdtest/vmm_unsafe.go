package uffdtest

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/uffd"
)

// holeBytes separates guest regions in the fake VMM's address space, like
// the unmapped gap between two memory regions of an x86 guest over 3 GiB.
const holeBytes = 2 << 20

// mapRegions reserves one anonymous mapping for all regions, unmaps a hole
// between neighbours and places the regions in reverse file order (region 0
// highest), so that address order and file order differ.
func (g *guest) mapRegions() ([]uffd.Region, error) {
	var total uint64
	for _, l := range g.lay {
		if l.Size == 0 || l.Size%4096 != 0 || l.Offset%4096 != 0 {
			return nil, fmt.Errorf("region %+v is not page-aligned", l)
		}
		if l.Offset+l.Size > uint64(len(g.file)) {
			return nil, fmt.Errorf("region %+v lies past the %d-byte memory file", l, len(g.file))
		}
		total += l.Size + holeBytes
	}
	area, err := unix.Mmap(-1, 0, int(total), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("reserving guest memory: %w", err)
	}
	// The slices below alias this mapping, which lives until the process
	// exits; only the holes are unmapped, and no slice covers them.
	base := uintptr(unsafe.Pointer(unsafe.SliceData(area)))
	g.mem = make([][]byte, len(g.lay))
	regions := make([]uffd.Region, len(g.lay))
	pos := uint64(0)
	for i := len(g.lay) - 1; i >= 0; i-- {
		l := g.lay[i]
		g.mem[i] = area[pos : pos+l.Size : pos+l.Size]
		regions[i] = uffd.Region{BaseHostVirtAddr: uint64(base) + pos, Size: l.Size, Offset: l.Offset, PageSize: uffd.PageSize4K}
		pos += l.Size
		if _, _, errno := unix.Syscall(unix.SYS_MUNMAP, base+uintptr(pos), holeBytes, 0); errno != 0 {
			return nil, fmt.Errorf("unmapping the hole after region %d: %w", i, errno)
		}
		pos += holeBytes
	}
	return regions, nil
}

// touch reads one byte of mem, faulting the page in, like a vCPU's first
// access. The load goes through a pointer the compiler cannot prove unused.
func touch(mem []byte, off uint64) byte {
	return *(*byte)(unsafe.Add(unsafe.Pointer(unsafe.SliceData(mem)), off))
}
