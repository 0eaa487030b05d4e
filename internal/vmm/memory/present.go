package memory

import (
	"errors"
	"fmt"
	"math/bits"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Guest memory that a userfaultfd page server fills (Backing.Userfault) must
// never be touched by a plain load or store in Go code while a page may be
// missing. Such an access faults in user mode and the thread sleeps in the
// kernel until the page server answers, holding its P: it is not in a
// system call, so the runtime does not hand the P on, and preemption does
// not get it off either (observed with one P: reads through copy, and plain
// 8-byte loads in Go code alike, never finished). When the page server
// runs in the same process (the VMM inside thaw-shim), a few such
// goroutines take every P and the page server never runs again: the
// process deadlocks. (A vCPU's fault is harmless: it happens inside
// KVM_RUN, a system call that gives up its P.)
//
// So every Go access path (Slice, and everything built on it) first makes
// the range present from inside a system call, madvise(MADV_POPULATE_READ,
// Linux 5.14+), which faults the pages in through the kernel's GUP path:
// the uffd wait then happens in a syscall, the runtime hands the P on, and
// the page server runs. A per-region bitmap of pages known present keeps
// the common case (already present) to an atomic load and a bit test.
//
// How MADV_POPULATE_READ behaves on a userfaultfd-registered range
// (measured on Linux 6.18 by TestPopulateReadWaitsForPageServer):
//   - It blocks until the page server resolves every missing page of the
//     range (UFFDIO_COPY or UFFDIO_ZEROPAGE), then returns 0 with the
//     server's bytes in place.
//   - Signals do not end the wait: a storm of SIGURG (the Go runtime's
//     preemption signal) sent to the blocked thread did not make it return
//     early, and it never returned EINTR or EAGAIN (the wait in the GUP
//     path looks killable, not interruptible). populate still retries
//     EINTR, which madvise(2) documents; anything else is an error.
//   - If every copy of the userfaultfd is closed while it waits (the page
//     server's and the VMM's), the kernel drops the registration, wakes it,
//     and it returns 0 with the missing pages zero-filled: the same silent
//     zeros a vCPU would get, which is why snapshot.Loaded keeps the VMM's
//     copy open for as long as the memory is mapped. Closing only one copy
//     leaves it waiting.
//
// A page found present stays present: the VMM never discards guest memory
// (no balloon). Should a MADV_DONTNEED ever come, the page server's REMOVE
// handling unregisters the range, so a stale "present" bit then guards a
// page that can no longer raise a userfault and is still safe.
//
// After a zero-page mapping (UFFDIO_ZEROPAGE, or a read populate of an
// unregistered page), a write from Go is an ordinary copy-on-write fault
// that the kernel resolves without the userfaultfd.

// pageSet is a region's bitmap of pages known present: 1 bit per 4 KiB
// page, so a 4 GiB guest costs 128 KiB. Bits are only ever set, with
// atomic OR, so any goroutine may test and mark concurrently.
type pageSet struct {
	words []atomic.Uint64
}

func newPageSet(size uint64) *pageSet {
	pages := size / PageSize
	return &pageSet{words: make([]atomic.Uint64, (pages+63)/64)}
}

// bytes returns the bitmap's size in bytes.
func (s *pageSet) bytes() int { return len(s.words) * 8 }

// has reports whether pages [first, last] are all marked.
func (s *pageSet) has(first, last uint64) bool {
	for w := first / 64; w <= last/64; w++ {
		m := wordMask(w, first, last)
		if s.words[w].Load()&m != m {
			return false
		}
	}
	return true
}

// missing returns the first and last unmarked pages of [first, last], and
// false when every page is marked.
func (s *pageSet) missing(first, last uint64) (lo, hi uint64, ok bool) {
	for w := first / 64; w <= last/64; w++ {
		if gap := ^s.words[w].Load() & wordMask(w, first, last); gap != 0 {
			lo, ok = w*64+uint64(bits.TrailingZeros64(gap)), true
			break
		}
	}
	if !ok {
		return 0, 0, false
	}
	for w := last / 64; ; w-- {
		if gap := ^s.words[w].Load() & wordMask(w, first, last); gap != 0 {
			hi = w*64 + 63 - uint64(bits.LeadingZeros64(gap))
			return lo, hi, true
		}
	}
}

// add marks pages [first, last].
func (s *pageSet) add(first, last uint64) {
	for w := first / 64; w <= last/64; w++ {
		s.words[w].Or(wordMask(w, first, last))
	}
}

// wordMask is the bits of word w that pages [first, last] cover.
func wordMask(w, first, last uint64) uint64 {
	m := ^uint64(0)
	if lo := w * 64; first > lo {
		m &= ^uint64(0) << (first - lo)
	}
	if hi := w*64 + 63; last < hi {
		m &= ^uint64(0) >> (hi - last)
	}
	return m
}

// populateDisabled turns populate off, for the test that shows the
// deadlock it prevents. Never set outside tests.
var populateDisabled bool

// ensure makes bytes [off, off+n) of the region present without a
// user-mode fault. Plain memory costs one nil check; the common userfault
// case (one page, already present) an atomic load and a bit test.
func (r *Region) ensure(off, n uint64) error {
	if r.present == nil || n == 0 {
		return nil
	}
	first, last := off/PageSize, (off+n-1)/PageSize
	if first == last {
		if r.present.words[first/64].Load()&(1<<(first%64)) != 0 {
			return nil
		}
	} else if r.present.has(first, last) {
		return nil
	}
	return r.populate(first, last)
}

// populate faults in the unmarked pages of [first, last] through
// madvise(MADV_POPULATE_READ) and marks the whole range. One call covers
// the span from the first to the last missing page: pages already present
// inside it cost the kernel a page-table walk, not a fault.
func (r *Region) populate(first, last uint64) error {
	lo, hi, ok := r.present.missing(first, last)
	if !ok || populateDisabled {
		return nil
	}
	span := r.Host[lo*PageSize : (hi+1)*PageSize]
	for {
		err := unix.Madvise(span, unix.MADV_POPULATE_READ)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("populating guest memory [%#x, %#x) from the page server: %w", r.GPA+lo*PageSize, r.GPA+(hi+1)*PageSize, err)
		}
		break
	}
	r.present.add(first, last)
	return nil
}

// checkPopulate reports whether this kernel knows MADV_POPULATE_READ
// (Linux 5.14+), without touching memory: a zero-length madvise returns 0
// for a known advice and EINVAL for an unknown one.
func checkPopulate(addr uint64) error {
	_, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(addr), 0, unix.MADV_POPULATE_READ)
	if errno != 0 {
		return fmt.Errorf("madvise(MADV_POPULATE_READ): %w (userfaultfd-backed guest memory needs Linux 5.14 or later)", errno)
	}
	return nil
}
