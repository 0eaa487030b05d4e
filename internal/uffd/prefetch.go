package uffd

import (
	"fmt"

	"golang.org/x/sys/unix"

	abi "github.com/thawvm/thaw/internal/abi/uffd"
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
	if log != nil {
		p.order = log.Offsets
		if p.order == nil {
			p.order = []uint64{}
		}
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
	n := uint64(1)
	pf.advance()
	for (n+1)*reg.PageSize <= s.cfg.PrefetchRunBytes {
		r, page, ok := pf.peek()
		if !ok || r != ri || page != first+n || s.pages[ri][page] != pageMissing {
			break
		}
		n++
		pf.advance()
	}
	dst := reg.BaseHostVirtAddr + first*reg.PageSize
	off := reg.Offset + first*reg.PageSize
	length := n * reg.PageSize
	src, err := s.src.Bytes(off, length)
	if err != nil {
		return fmt.Errorf("prefetch: reading file offset %#x: %w", off, err)
	}
	c := abi.UffdioCopy{Dst: dst, Src: addrOf(src), Len: length, Mode: abi.UFFDIO_COPY_MODE_DONTWAKE}
	cerr := ioctlCopy(fd, &c)
	copied := uint64(0)
	switch {
	case cerr == nil:
		copied = length
	case c.Copy > 0:
		copied = uint64(c.Copy) // partial; the next page's error shows next time
	}
	pages := copied / reg.PageSize
	for i := uint64(0); i < pages; i++ {
		s.installed(ri, first+i, off+i*reg.PageSize)
	}
	if pages > 0 {
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
