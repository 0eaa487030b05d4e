package uffd

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// prefetcher walks the prefetch order: the access log's offsets, or, with
// no log, every page of every region in file order. With a log it copies
// only the logged pages: the rest of the file is what the recorded workload
// did not touch, and copying it would cost the clone memory for nothing.
type prefetcher struct {
	t     *regionTable
	order []uint64 // file offsets; nil means sequential
	cur   cursor
	done  bool
}

// cursor is a position in the order; a plain value so a run can rewind.
type cursor struct {
	k    int    // index into order (log mode)
	reg  int    // index into t.byOffset (sequential mode)
	page uint64 // page within that region (sequential mode)
}

func newPrefetcher(t *regionTable, log *AccessLog) *prefetcher {
	p := &prefetcher{t: t}
	if log == nil {
		return p
	}
	p.order = log.Offsets
	if p.order == nil {
		p.order = []uint64{}
	}
	// A log recorded with larger pages than some region uses (2 MiB records
	// replayed over 4 KiB pages) names every small page of each record.
	small := uint64(PageSize2M)
	for _, r := range t.regions {
		small = min(small, r.PageSize)
	}
	if log.PageSize > small {
		expanded := make([]uint64, 0, len(log.Offsets)*int(log.PageSize/small))
		for _, off := range log.Offsets {
			for sub := uint64(0); sub < log.PageSize; sub += small {
				expanded = append(expanded, off+sub)
			}
		}
		p.order = expanded
	}
	return p
}

// peek returns the candidate at the cursor: a region index and page, with
// ok=false at the end. ri is -1 for a logged offset no region holds.
func (p *prefetcher) peek() (ri int, page uint64, ok bool) {
	if p.order != nil {
		if p.cur.k >= len(p.order) {
			return 0, 0, false
		}
		off := p.order[p.cur.k]
		ri = p.t.byFileOffset(off)
		if ri < 0 {
			return -1, 0, true
		}
		r := p.t.regions[ri]
		return ri, (off - r.Offset) / r.PageSize, true
	}
	if p.cur.reg >= len(p.t.byOffset) {
		return 0, 0, false
	}
	return p.t.byOffset[p.cur.reg], p.cur.page, true
}

func (p *prefetcher) advance() {
	if p.order != nil {
		p.cur.k++
		return
	}
	r := p.t.regions[p.t.byOffset[p.cur.reg]]
	p.cur.page++
	if p.cur.page >= r.Size/r.PageSize {
		p.cur.reg++
		p.cur.page = 0
	}
}

// pageBytes returns the source bytes of page p of region r, or nil when
// the source cannot provide them (fill reports that error).
func (s *Server) pageBytes(r Region, p uint64) []byte {
	b, _ := s.src.Bytes(r.Offset+p*r.PageSize, r.PageSize)
	return b
}

// prefetchRun copies the next run of missing, contiguous pages (up to
// Config.PrefetchRunBytes) with one UFFDIO_COPY in DONTWAKE mode, then
// issues one wake for the run for any vCPU that faulted on it meanwhile.
func (s *Server) prefetchRun(fd uintptr) error {
	pf := s.pf
	var ri int
	var first uint64
	for {
		r, page, ok := pf.peek()
		if !ok {
			pf.done = true
			s.st.prefTime.Store(int64(time.Since(s.started)))
			s.st.prefDone.Store(true)
			st := s.st.snapshot()
			s.log.Info("prefetch complete", "pages", st.PrefetchedPages, "runs", st.PrefetchRuns, "logged", pf.order != nil)
			return nil
		}
		if r >= 0 && s.pages[r][page] == pageMissing {
			ri, first = r, page
			break
		}
		pf.advance()
	}
	start := pf.cur
	reg := s.regions.regions[ri]
	off := reg.Offset + first*reg.PageSize
	zero := s.zeroable(reg, s.pageBytes(reg, first))
	n := uint64(1)
	pf.advance()
	// Extend the run over contiguous missing pages that are all zero, or
	// all not zero, like the first.
	for (n+1)*reg.PageSize <= s.cfg.PrefetchRunBytes {
		r, page, ok := pf.peek()
		if !ok || r != ri || page != first+n || s.pages[ri][page] != pageMissing || s.zeroable(reg, s.pageBytes(reg, page)) != zero {
			break
		}
		n++
		pf.advance()
	}
	dst := reg.BaseHostVirtAddr + first*reg.PageSize
	length := n * reg.PageSize
	src, err := s.src.Bytes(off, length)
	if err != nil {
		return fmt.Errorf("prefetch: reading file offset %#x: %w", off, err)
	}
	copied, cerr := fill(fd, dst, src, zero, true)
	pages := copied / reg.PageSize
	for i := uint64(0); i < pages; i++ {
		s.installed(ri, first+i, off+i*reg.PageSize)
	}
	if pages > 0 {
		if zero {
			s.st.zeroPages.Add(pages)
		}
		s.st.prefPages.Add(pages)
		s.st.prefBytes.Add(copied)
		s.st.prefRuns.Add(1)
		if err := s.wakeRange(fd, dst, copied); err != nil {
			return err
		}
	}
	if cerr == nil {
		return nil
	}
	// Resume right after what was copied.
	pf.cur = start
	for range pages {
		pf.advance()
	}
	if pages > 0 {
		return nil
	}
	switch cerr {
	case unix.EAGAIN:
		return nil // events pending: the loop drains them, then resumes here
	case unix.EEXIST:
		s.pages[ri][first] = pageInstalled
		pf.advance()
		return nil
	case unix.ENOENT:
		s.pages[ri][first] = pageGone
		pf.advance()
		return nil
	case unix.ESRCH:
		return errGone
	case unix.EFAULT:
		if err := s.src.Check(); err != nil {
			return fmt.Errorf("prefetch: copying file offset %#x to %#x: %w", off, dst, err)
		}
	}
	return fmt.Errorf("prefetch: copying %d bytes from file offset %#x to %#x: %w", length, off, dst, cerr)
}
