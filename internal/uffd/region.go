package uffd

import (
	"fmt"
	"slices"
)

// Page sizes a region may use: base pages and 2 MiB huge pages (hugetlbfs).
const (
	PageSize4K = 4 << 10
	PageSize2M = 2 << 20
)

// MaxRegions caps how many regions one handshake may list. Firecracker sends
// one or two (x86 guests over 3 GiB have a gap below 4 GiB); the cap only
// bounds what a broken sender can make us allocate.
const MaxRegions = 1024

// Region maps one guest memory region: Size bytes at BaseHostVirtAddr in the
// VMM's address space hold the memory file's bytes [Offset, Offset+Size).
// PageSize is the page size the region is backed with, in bytes.
type Region struct {
	BaseHostVirtAddr uint64
	Size             uint64
	Offset           uint64
	PageSize         uint64
}

func (r Region) end() uint64     { return r.BaseHostVirtAddr + r.Size }
func (r Region) fileEnd() uint64 { return r.Offset + r.Size }

func (r Region) String() string {
	return fmt.Sprintf("[%#x, %#x) <- file [%#x, %#x) page %d", r.BaseHostVirtAddr, r.end(), r.Offset, r.fileEnd(), r.PageSize)
}

// ValidateRegions checks regions as the receiving side of a handshake must:
// at least one and at most MaxRegions; each with a known page size (4 KiB or
// 2 MiB), a non-zero size, and address, size and offset aligned to that page
// size; no arithmetic overflow; no two regions overlapping in the VMM's
// address space or in the memory file (Firecracker's offsets are cumulative,
// so file ranges never overlap, and the prefetcher relies on each file page
// having exactly one home). The error names the offending region.
func ValidateRegions(regions []Region) error {
	if len(regions) == 0 {
		return fmt.Errorf("no memory regions: the handshake must list at least one")
	}
	if len(regions) > MaxRegions {
		return fmt.Errorf("%d memory regions, more than the %d a handshake may list", len(regions), MaxRegions)
	}
	for i, r := range regions {
		if r.PageSize != PageSize4K && r.PageSize != PageSize2M {
			return fmt.Errorf("region %d: page size %d is not supported: use %d (4 KiB) or %d (2 MiB)", i, r.PageSize, PageSize4K, PageSize2M)
		}
		if r.Size == 0 {
			return fmt.Errorf("region %d: size is 0", i)
		}
		mask := r.PageSize - 1
		if r.BaseHostVirtAddr&mask != 0 || r.Size&mask != 0 || r.Offset&mask != 0 {
			return fmt.Errorf("region %d: base_host_virt_addr %#x, size %#x and offset %#x must all be multiples of the page size %d",
				i, r.BaseHostVirtAddr, r.Size, r.Offset, r.PageSize)
		}
		if r.end() < r.BaseHostVirtAddr || r.fileEnd() < r.Offset {
			return fmt.Errorf("region %d: base %#x or offset %#x plus size %#x overflows 64 bits", i, r.BaseHostVirtAddr, r.Offset, r.Size)
		}
	}
	idx := make([]int, len(regions))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return cmpU64(regions[a].BaseHostVirtAddr, regions[b].BaseHostVirtAddr) })
	for k := 1; k < len(idx); k++ {
		a, b := regions[idx[k-1]], regions[idx[k]]
		if b.BaseHostVirtAddr < a.end() {
			return fmt.Errorf("regions %d %v and %d %v overlap in the VMM's address space", idx[k-1], a, idx[k], b)
		}
	}
	slices.SortFunc(idx, func(a, b int) int { return cmpU64(regions[a].Offset, regions[b].Offset) })
	for k := 1; k < len(idx); k++ {
		a, b := regions[idx[k-1]], regions[idx[k]]
		if b.Offset < a.fileEnd() {
			return fmt.Errorf("regions %d %v and %d %v overlap in the memory file", idx[k-1], a, idx[k], b)
		}
	}
	return nil
}

// CheckFileSize reports whether every region lies inside a memory file of
// size bytes, naming the first that does not.
func CheckFileSize(regions []Region, size int64) error {
	if size < 0 {
		return fmt.Errorf("memory file size %d is negative", size)
	}
	for i, r := range regions {
		if r.Offset >= uint64(size) {
			return fmt.Errorf("region %d %v starts past the end of the %d-byte memory file: wrong file, or a handshake from another snapshot", i, r, size)
		}
		if r.fileEnd() > uint64(size) {
			return fmt.Errorf("region %d %v ends %d bytes past the end of the %d-byte memory file: the file is truncated", i, r, r.fileEnd()-uint64(size), size)
		}
	}
	return nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// regionTable finds the region holding a host address or a file offset.
// Regions are validated and sorted by address; byOffset holds the indexes
// sorted by file offset.
type regionTable struct {
	regions  []Region
	byOffset []int
}

func newRegionTable(regions []Region) regionTable {
	rs := slices.Clone(regions)
	slices.SortFunc(rs, func(a, b Region) int { return cmpU64(a.BaseHostVirtAddr, b.BaseHostVirtAddr) })
	byOff := make([]int, len(rs))
	for i := range byOff {
		byOff[i] = i
	}
	slices.SortFunc(byOff, func(a, b int) int { return cmpU64(rs[a].Offset, rs[b].Offset) })
	return regionTable{regions: rs, byOffset: byOff}
}

// byAddr returns the index of the region holding addr, or -1.
func (t *regionTable) byAddr(addr uint64) int {
	i, _ := slices.BinarySearchFunc(t.regions, addr, func(r Region, a uint64) int {
		if a < r.BaseHostVirtAddr {
			return 1
		}
		if a >= r.end() {
			return -1
		}
		return 0
	})
	if i < len(t.regions) && addr >= t.regions[i].BaseHostVirtAddr && addr < t.regions[i].end() {
		return i
	}
	return -1
}

// byFileOffset returns the index of the region holding file offset off, or -1.
func (t *regionTable) byFileOffset(off uint64) int {
	k, _ := slices.BinarySearchFunc(t.byOffset, off, func(i int, o uint64) int {
		r := t.regions[i]
		if o < r.Offset {
			return 1
		}
		if o >= r.fileEnd() {
			return -1
		}
		return 0
	})
	if k < len(t.byOffset) {
		r := t.regions[t.byOffset[k]]
		if off >= r.Offset && off < r.fileEnd() {
			return t.byOffset[k]
		}
	}
	return -1
}
