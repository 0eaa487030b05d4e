package snapshot

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"github.com/thawvm/thaw/internal/vmm/memory"
)

// writeRun is the most WriteMemory reads with one Slice and writes with
// one pwrite.
const writeRun = 4 << 20

// WriteMemory writes guest memory to path in Firecracker's format: the
// regions, raw, concatenated in guest-physical order, so the file is
// exactly mem.Size() bytes.
//
// All-zero pages are not written: the file is sized first and they stay
// holes that read back as zeros, so a mostly idle 4 GiB guest costs a
// fraction of its size on disk and in write time. Scanning reads every
// page (a never-touched anonymous page reads as the shared zero page and
// allocates nothing).
//
// The file is written under a temporary name in the same directory and
// renamed over path at the end: clones may be running from an older file
// at path through MAP_PRIVATE mappings, and overwriting or truncating it in
// place would change (or, past a truncation, SIGBUS) their clean pages. The
// vCPUs must be paused; nothing may write guest memory meanwhile.
func WriteMemory(path string, mem *memory.Memory) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("writing memory file %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	err = writeRegions(tmp, mem)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("writing memory file %s: %w", path, err)
	}
	return nil
}

// writeRegions reads guest memory through Slice, one writeRun chunk at a
// time, rather than through the regions' Host mappings: the zero scan is
// Go code, and with userfaultfd-backed memory (a restored VM paused for a
// snapshot, or the shutdown dump) Slice first faults the chunk in from the
// page server inside madvise(2); a load of a missing page in Go would wait
// for the page server holding a P (see package memory). The pwrite of a
// run would be safe on its own: it faults inside the kernel.
func writeRegions(f *os.File, mem *memory.Memory) error {
	if err := f.Truncate(int64(mem.Size())); err != nil {
		return err
	}
	for _, r := range mem.Regions() {
		for chunk := uint64(0); chunk < r.Size; chunk += writeRun {
			size := min(writeRun, r.Size-chunk)
			host, err := mem.Slice(r.GPA+chunk, size)
			if err != nil {
				return err
			}
			var start, n uint64 // pending run of non-zero pages in host
			flush := func() error {
				if n == 0 {
					return nil
				}
				_, err := f.WriteAt(host[start:start+n], int64(r.FileOffset+chunk+start))
				n = 0
				return err
			}
			for off := uint64(0); off < size; off += memory.PageSize {
				if isZero(host[off : off+memory.PageSize]) {
					if err := flush(); err != nil {
						return err
					}
					continue
				}
				if n == 0 {
					start = off
				}
				n += memory.PageSize
			}
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

var zeroPage [memory.PageSize]byte

// isZero reports whether page is all zeros. bytes.Equal runs the
// runtime's vectorised memequal (and, under the race detector, is checked
// as one range rather than byte by byte).
func isZero(page []byte) bool { return bytes.Equal(page, zeroPage[:]) }
