// Package bus dispatches guest port I/O and MMIO accesses to the device
// that owns the address. A Bus is filled before the vCPUs start and only
// read afterwards, so lookups take no lock; devices synchronise themselves.
package bus

import (
	"fmt"
	"sort"
)

// Device is anything that answers accesses inside its window. offset is
// relative to the window's base; data is 1 to 8 bytes, filled by Read.
type Device interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

type window struct {
	base, size uint64
	name       string
	dev        Device
}

// Bus is an address space of non-overlapping device windows.
type Bus struct {
	windows []window // sorted by base
}

// Add places dev at [base, base+size). It fails on an empty window or an
// overlap, naming both devices. Add must not race with Read or Write.
func (b *Bus) Add(name string, base, size uint64, dev Device) error {
	if size == 0 || base+size < base {
		return fmt.Errorf("bus window for %s at %#x: bad size %#x", name, base, size)
	}
	i := sort.Search(len(b.windows), func(i int) bool { return b.windows[i].base >= base })
	if i > 0 {
		if p := b.windows[i-1]; p.base+p.size > base {
			return fmt.Errorf("bus window for %s [%#x, %#x) overlaps %s [%#x, %#x)", name, base, base+size, p.name, p.base, p.base+p.size)
		}
	}
	if i < len(b.windows) {
		if n := b.windows[i]; base+size > n.base {
			return fmt.Errorf("bus window for %s [%#x, %#x) overlaps %s [%#x, %#x)", name, base, base+size, n.name, n.base, n.base+n.size)
		}
	}
	b.windows = append(b.windows, window{})
	copy(b.windows[i+1:], b.windows[i:])
	b.windows[i] = window{base: base, size: size, name: name, dev: dev}
	return nil
}

// find returns the window holding all of [addr, addr+n).
func (b *Bus) find(addr uint64, n int) (window, bool) {
	i := sort.Search(len(b.windows), func(i int) bool { return b.windows[i].base > addr }) - 1
	if i < 0 {
		return window{}, false
	}
	w := b.windows[i]
	if addr-w.base >= w.size || uint64(n) > w.size-(addr-w.base) {
		return window{}, false
	}
	return w, true
}

// Read dispatches a read of len(data) bytes at addr. It reports false when
// no device owns the whole access; data is then filled with 0xff, what an
// unclaimed bus reads as.
func (b *Bus) Read(addr uint64, data []byte) bool {
	w, ok := b.find(addr, len(data))
	if !ok {
		for i := range data {
			data[i] = 0xff
		}
		return false
	}
	w.dev.Read(addr-w.base, data)
	return true
}

// Write dispatches a write at addr; it reports false when no device owns
// the whole access, and the write is dropped.
func (b *Bus) Write(addr uint64, data []byte) bool {
	w, ok := b.find(addr, len(data))
	if !ok {
		return false
	}
	w.dev.Write(addr-w.base, data)
	return true
}
