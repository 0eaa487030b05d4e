package uffd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	abi "github.com/thawvm/thaw/internal/abi/uffd"
)

// Config tunes a Server. Zero fields take the defaults in brackets.
type Config struct {
	// PollInterval bounds how long Serve sleeps in poll(2) with nothing to
	// do [5s]. A fault, the VMM exiting, ctx ending and Close all wake it
	// at once, so this is only a safety net: an idle page server should
	// not wake the shim (a short interval costs every idle sandbox CPU).
	PollInterval time.Duration
	// BatchSize is how many uffd messages one read(2) may return [128].
	BatchSize int
	// PrefetchRunBytes caps one prefetch UFFDIO_COPY. Larger runs approach
	// the kernel's bulk-copy rate; smaller ones let a fault that arrives
	// during a copy be answered sooner [1 MiB].
	PrefetchRunBytes uint64
	// DisablePrefetch turns the prefetcher off (recording runs do this).
	DisablePrefetch bool
	// PrefetchRate caps the prefetcher at this many bytes per second
	// [0: unlimited]; zero pages count like copies. Faults are never
	// delayed by it: runs are spaced so that the bytes prefetched since
	// Serve began stay within the rate plus one run, and while the next
	// run is not yet due Serve sleeps in poll(2) until it is (a fault
	// still wakes it at once). It bounds the disk, page cache and CPU one
	// sandbox's prefetch takes from its neighbours; a sandbox being
	// created among others is limited too, so it faults more instead
	// (docs/benchmarks/uffd.md, burst).
	PrefetchRate uint64
	// DisableZeroPages copies all-zero pages like any other instead of
	// mapping the shared zero page (which saves the VM the memory until it
	// writes the page; 4 KiB regions only, read faults and prefetch).
	DisableZeroPages bool
}

func (c Config) withDefaults() Config {
	if c.PollInterval == 0 {
		c.PollInterval = 5 * time.Second
	}
	if c.BatchSize == 0 {
		c.BatchSize = 128
	}
	if c.PrefetchRunBytes == 0 {
		c.PrefetchRunBytes = 1 << 20
	}
	return c
}

// Validate checks the configuration after applying defaults.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.PollInterval < time.Millisecond || c.PollInterval > 10*time.Second:
		return fmt.Errorf("poll interval %v: want 1ms to 10s", c.PollInterval)
	case c.BatchSize < 1 || c.BatchSize > 4096:
		return fmt.Errorf("batch size %d: want 1 to 4096 messages", c.BatchSize)
	case c.PrefetchRunBytes < PageSize4K || c.PrefetchRunBytes > 64<<20 || c.PrefetchRunBytes%PageSize4K != 0:
		return fmt.Errorf("prefetch run size %d: want a multiple of 4096 from 4 KiB to 64 MiB", c.PrefetchRunBytes)
	case c.PrefetchRate != 0 && c.PrefetchRate < MinPrefetchRate:
		return fmt.Errorf("prefetch rate %d bytes/s: want 0 (unlimited) or at least %d (one 4 KiB page a second)", c.PrefetchRate, MinPrefetchRate)
	case c.PrefetchRate != 0 && c.DisablePrefetch:
		return fmt.Errorf("prefetch rate %d bytes/s with prefetch disabled: the limit applies only to the prefetcher", c.PrefetchRate)
	}
	return nil
}

// MinPrefetchRate is the lowest non-zero Config.PrefetchRate: one 4 KiB
// page a second.
const MinPrefetchRate = PageSize4K

// ServerParams gathers what a Server is built from.
type ServerParams struct {
	Config Config
	// Handshake is the VMM's handshake; the Server takes ownership of its
	// file descriptors and closes them in Close.
	Handshake *Handshake
	// Source provides page contents; the caller owns it and must keep it
	// open until the Server is closed (several servers may share one).
	Source Source
	// Order, if set, is the prefetch order (a recorded access log); without
	// it the prefetcher copies every page in file order.
	Order *AccessLog
	// Recorder, if set, records every page's first install.
	Recorder *Recorder
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
}

// page states
const (
	pageMissing   uint8 = iota
	pageInstalled       // copied by us (or found present)
	pageGone            // removed (unregistered) or no longer mapped: never copy
)

// Server serves one VMM's guest memory through its userfaultfd.
type Server struct {
	cfg     Config
	log     *slog.Logger
	uffd    *os.File
	peer    *os.File // pidfd of the VMM, or nil
	peerPID int
	regions regionTable
	pages   [][]uint8 // state per region (sorted by address), per page
	src     Source
	rec     *Recorder
	pf      *prefetcher // nil when prefetch is disabled
	pace    *pacer      // nil when prefetch is unlimited (set by Serve)
	st      counters
	serving atomic.Bool
	started time.Time // when Serve began

	// wake is an eventfd that ctx ending and Close write to, so that a
	// Serve sleeping in poll(2) returns at once.
	wake *os.File

	closed    atomic.Bool // set before the fds are closed
	closeOnce sync.Once
	closeErr  error
}

// NewServer checks the handshake's regions against the source (every region
// must lie inside the memory file) and the optional order and recorder
// against both, and returns a server ready to Serve. On error the handshake
// is left open for the caller to close.
func NewServer(p ServerParams) (*Server, error) {
	if err := p.Config.Validate(); err != nil {
		return nil, fmt.Errorf("page server config: %w", err)
	}
	if p.Handshake == nil || p.Handshake.Uffd == nil {
		return nil, errors.New("page server: no handshake (or its userfaultfd was already taken)")
	}
	if p.Source == nil {
		return nil, errors.New("page server: no source of page contents")
	}
	if err := ValidateRegions(p.Handshake.Regions); err != nil {
		return nil, fmt.Errorf("page server: %w", err)
	}
	if err := CheckFileSize(p.Handshake.Regions, p.Source.Size()); err != nil {
		return nil, fmt.Errorf("page server: %w", err)
	}
	if err := p.Source.Check(); err != nil {
		return nil, fmt.Errorf("page server: %w", err)
	}
	log := p.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:     p.Config.withDefaults(),
		log:     log,
		peerPID: p.Handshake.PeerPID,
		regions: newRegionTable(p.Handshake.Regions),
		src:     p.Source,
		rec:     p.Recorder,
	}
	for _, r := range s.regions.regions {
		if s.rec != nil && r.PageSize%s.rec.PageSize() != 0 {
			return nil, fmt.Errorf("page server: region %v has pages smaller than the recorder's %d bytes", r, s.rec.PageSize())
		}
		s.pages = append(s.pages, make([]uint8, r.Size/r.PageSize))
	}
	if !s.cfg.DisablePrefetch {
		s.pf = newPrefetcher(&s.regions, p.Order)
		s.st.prefRate = s.cfg.PrefetchRate
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("page server: eventfd: %w", err)
	}
	s.wake = os.NewFile(uintptr(efd), "uffd-server-wake")
	s.uffd, s.peer = p.Handshake.Uffd, p.Handshake.peer
	p.Handshake.Uffd, p.Handshake.peer = nil, nil
	return s, nil
}

// Stats returns a snapshot of the counters. Safe from any goroutine.
func (s *Server) Stats() Stats { return s.st.snapshot() }

// Regions returns the regions being served, sorted by address.
func (s *Server) Regions() []Region { return append([]Region(nil), s.regions.regions...) }

// Close releases the userfaultfd and the peer pidfd. A concurrent Serve
// stops (returning nil) at its next system call. Closing the page server's
// copy of the uffd does not free the VMM: while the VMM holds its own copy,
// its faults stay pending, so whoever owns the VMM must stop it.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.kick()
		var errs []error
		errs = append(errs, s.uffd.Close(), s.wake.Close())
		if s.peer != nil {
			errs = append(errs, s.peer.Close())
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// errGone means the VMM's address space no longer exists.
var errGone = errors.New("VMM address space gone")

// kick makes a Serve sleeping in poll(2) return (the eventfd stays
// readable; Serve is leaving anyway).
func (s *Server) kick() {
	one := binary.NativeEndian.AppendUint64(nil, 1) // eventfd(2) adds a host-order uint64
	_ = control(s.wake, func(fd uintptr) error {
		_, err := unix.Write(int(fd), one)
		return err
	})
}

// Serve answers page faults and events until ctx is done, the VMM goes away
// (its process exits or its address space is gone) or Close is called, in
// which cases it returns nil; or until a fatal problem, such as a fault
// outside every region or a copy the kernel refuses, which it returns.
// Faults always come first: the prefetcher copies one run only when a
// non-blocking read has found no message pending. Serve starts no
// goroutines of its own (context.AfterFunc runs one to wake it when ctx
// ends) and may be called once.
func (s *Server) Serve(ctx context.Context) error {
	if !s.serving.CompareAndSwap(false, true) {
		return errors.New("page server: Serve called twice")
	}
	s.started = time.Now()
	stopWake := context.AfterFunc(ctx, s.kick)
	defer stopWake()
	if s.pf == nil {
		s.st.prefDone.Store(true)
	}
	if s.pf != nil && s.cfg.PrefetchRate != 0 {
		s.pace = newPacer(s.cfg.PrefetchRate, s.cfg.PrefetchRunBytes, s.started)
	}
	err := s.serve(ctx)
	if s.rec != nil {
		s.rec.Flush()
	}
	switch {
	case err == nil:
		return nil
	case s.closed.Load():
		// Control on a closed file fails with an unexported error; the
		// flag says why.
		s.log.Info("page server stopping: closed")
		return nil
	case errors.Is(err, errGone):
		s.log.Info("page server stopping: VMM went away", "pid", s.peerPID)
		return nil
	}
	s.log.Error("page server failed", "pid", s.peerPID, "err", err)
	return err
}

func (s *Server) serve(ctx context.Context) error {
	msgs := make([]abi.UffdMsg, s.cfg.BatchSize)
	// Faults EAGAIN deferred, with the time they were read (their latency
	// counts from then).
	type fault struct {
		addr, flags uint64
		readAt      time.Time
	}
	var deferred []fault
	for {
		if ctx.Err() != nil {
			s.log.Info("page server stopping: context done", "err", ctx.Err())
			return nil
		}
		var n int
		err := control(s.uffd, func(fd uintptr) error {
			var rerr error
			n, rerr = readMsgs(fd, msgs)
			if rerr == unix.EAGAIN || rerr == unix.EINTR {
				return nil
			}
			if rerr != nil {
				return fmt.Errorf("reading the userfaultfd: %w", rerr)
			}
			now := time.Now()
			for i := range n {
				again, err := s.handleMsg(fd, &msgs[i], now)
				if err != nil {
					return err
				}
				if again {
					deferred = append(deferred, fault{faultAddress(&msgs[i]), faultFlags(&msgs[i]), now})
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if n > 0 {
			continue // drain every pending message before anything else
		}
		if len(deferred) > 0 {
			// The events have been drained; retry what EAGAIN deferred. If
			// the address space is still changing, wait a moment.
			retry := deferred
			deferred = nil
			err := control(s.uffd, func(fd uintptr) error {
				for _, f := range retry {
					again, err := s.serveFault(fd, f.addr, f.flags, f.readAt)
					if err != nil {
						return err
					}
					if again {
						deferred = append(deferred, f)
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
			if len(deferred) > 0 {
				if err := s.wait(time.Millisecond); err != nil {
					return err
				}
			}
			continue
		}
		if s.pf != nil && !s.pf.done {
			if err := s.prefetchPaced(); err != nil {
				return err
			}
			continue
		}
		if s.rec != nil {
			s.rec.Flush()
		}
		if err := s.wait(s.cfg.PollInterval); err != nil {
			return err
		}
	}
}

// prefetchPaced copies the next prefetch run, or, when the rate limit
// says the next run is not due yet, sleeps until it is or until something
// wakes Serve (a fault, the VMM exiting, ctx, Close), whichever is first.
// With a limit, even finding that nothing is left waits for its turn, so
// a prefetch of N bytes takes at least N/rate.
func (s *Server) prefetchPaced() error {
	if s.pace == nil {
		return control(s.uffd, s.prefetchRun)
	}
	now := time.Now()
	if d := s.pace.delay(now); d > 0 {
		err := s.wait(d)
		s.st.prefWait.Add(int64(time.Since(now)))
		s.st.prefWaits.Add(1)
		return err
	}
	before := s.st.prefBytes.Load()
	if err := control(s.uffd, s.prefetchRun); err != nil {
		return err
	}
	s.pace.charge(now, s.st.prefBytes.Load()-before)
	return nil
}

// wait sleeps in poll(2) until the uffd is readable, the VMM exits, ctx
// ends or Close is called (kick), or timeout passes. It returns errGone
// when the VMM has exited.
func (s *Server) wait(timeout time.Duration) error {
	var peerExited bool
	err := control(s.uffd, func(ufd uintptr) error {
		return control(s.wake, func(wfd uintptr) error {
			return s.pollFDs(ufd, wfd, timeout, &peerExited)
		})
	})
	if err != nil {
		return err
	}
	if peerExited {
		return fmt.Errorf("VMM process %d exited: %w", s.peerPID, errGone)
	}
	return nil
}

// pollFDs is wait's poll(2); the caller holds the uffd and wake
// descriptors (control).
func (s *Server) pollFDs(ufd, wfd uintptr, timeout time.Duration, peerExited *bool) error {
	fds := []unix.PollFd{{Fd: int32(ufd), Events: unix.POLLIN}, {Fd: int32(wfd), Events: unix.POLLIN}}
	poll := func() error {
		// Round up: a pacing wait shorter than a millisecond must not
		// become a zero timeout (a busy loop).
		_, err := unix.Poll(fds, int((timeout+time.Millisecond-1)/time.Millisecond))
		if err != nil && err != unix.EINTR {
			return fmt.Errorf("polling the userfaultfd: %w", err)
		}
		if len(fds) > 2 && fds[2].Revents != 0 {
			*peerExited = true
		}
		if fds[0].Revents&(unix.POLLERR|unix.POLLNVAL) != 0 {
			return fmt.Errorf("polling the userfaultfd: revents %#x", fds[0].Revents)
		}
		return nil
	}
	if s.peer == nil {
		return poll()
	}
	return control(s.peer, func(pfd uintptr) error {
		fds = append(fds, unix.PollFd{Fd: int32(pfd), Events: unix.POLLIN})
		return poll()
	})
}

// handleMsg handles one message. It reports again=true for a fault that
// must be retried once the pending events are drained.
func (s *Server) handleMsg(fd uintptr, m *abi.UffdMsg, readAt time.Time) (again bool, err error) {
	switch m.Event {
	case abi.UFFD_EVENT_PAGEFAULT:
		s.st.faults.Add(1)
		again, err := s.serveFault(fd, faultAddress(m), faultFlags(m), readAt)
		if again {
			s.st.eagain.Add(1)
		}
		return again, err
	case abi.UFFD_EVENT_REMOVE, abi.UFFD_EVENT_UNMAP:
		return false, s.remove(fd, m.Event, rangeStart(m), rangeEnd(m))
	case abi.UFFD_EVENT_FORK:
		// Reading a fork event installed a new userfaultfd in our process;
		// we serve only the VMM we were given, so release it.
		if ufd := forkUfd(m); ufd >= 0 {
			unix.Close(ufd)
		}
		s.log.Warn("ignoring userfaultfd fork event: the VMM forked with UFFD_FEATURE_EVENT_FORK; the child is not served")
		return false, nil
	case abi.UFFD_EVENT_REMAP:
		return false, fmt.Errorf("VMM moved registered memory (mremap from %#x to %#x): the page server cannot follow", rangeStart(m), rangeEnd(m))
	}
	return false, fmt.Errorf("unknown userfaultfd event %#x", m.Event)
}

// serveFault installs the page holding addr (flags are the fault's). It
// reports again=true when the kernel answered EAGAIN (the address space is
// changing: drain events and retry).
func (s *Server) serveFault(fd uintptr, addr, flags uint64, readAt time.Time) (again bool, err error) {
	ri := s.regions.byAddr(addr)
	if ri < 0 {
		return false, fmt.Errorf("page fault at %#x outside every registered region %v: the VMM and the handshake disagree about guest memory", addr, s.regions.regions)
	}
	r := s.regions.regions[ri]
	page := (addr - r.BaseHostVirtAddr) / r.PageSize
	dst := r.BaseHostVirtAddr + page*r.PageSize
	off := r.Offset + page*r.PageSize
	defer func() {
		if err == nil && !again {
			s.st.latency[bucketOf(time.Since(readAt))].Add(1)
		}
	}()
	if s.pages[ri][page] == pageGone {
		// The range was unregistered after this fault was queued; the
		// unregister woke the thread, a wake is harmless and cheap.
		return false, s.wakeRange(fd, dst, r.PageSize)
	}
	src, err := s.src.Bytes(off, r.PageSize)
	if err != nil {
		return false, fmt.Errorf("reading page at file offset %#x for fault at %#x: %w", off, addr, err)
	}
	// A write would at once replace a zero page with a fresh copy, so only
	// read faults get one.
	zero := flags&abi.UFFD_PAGEFAULT_FLAG_WRITE == 0 && s.zeroable(r, src)
	_, cerr := fill(fd, dst, src, zero, false)
	switch cerr {
	case nil:
		s.installed(ri, page, off)
		s.st.faultPages.Add(1)
		s.st.faultBytes.Add(r.PageSize)
		if zero {
			s.st.zeroPages.Add(1)
		}
		return false, nil
	case unix.EEXIST:
		// Another copy (the prefetcher's, or an earlier fault's) won: the
		// page is there but this thread may still sleep. Wake it.
		s.st.eexist.Add(1)
		s.pages[ri][page] = pageInstalled
		return false, s.wakeRange(fd, dst, r.PageSize)
	case unix.EAGAIN:
		return true, nil
	case unix.ENOENT:
		// Not registered any more (unregistered by a REMOVE, or unmapped):
		// the kernel serves it now. Wake the thread in case it still waits.
		s.pages[ri][page] = pageGone
		return false, s.wakeRange(fd, dst, r.PageSize)
	case unix.ESRCH:
		return false, errGone
	case unix.EFAULT:
		if cerr := s.src.Check(); cerr != nil {
			return false, fmt.Errorf("copying page at file offset %#x to %#x: %w", off, dst, cerr)
		}
		return false, fmt.Errorf("copying page at file offset %#x to %#x: %w", off, dst, unix.EFAULT)
	default:
		return false, fmt.Errorf("copying page at file offset %#x to %#x for fault at %#x: %w", off, dst, addr, cerr)
	}
}

// zeroPage is compared against to find all-zero source pages.
var zeroPage [PageSize4K]byte

// zeroable reports whether src, a page of region r, may be installed as the
// zero page: zero pages are on, the region has 4 KiB pages (hugetlbfs has no
// UFFDIO_ZEROPAGE) and every byte is zero.
func (s *Server) zeroable(r Region, src []byte) bool {
	return !s.cfg.DisableZeroPages && r.PageSize == PageSize4K && bytes.Equal(src, zeroPage[:])
}

// fill installs len(src) bytes at dst, as zero pages when zero and as a copy
// of src otherwise. It returns the bytes installed and the kernel's answer;
// a partial fill is EAGAIN with a non-zero count.
func fill(fd uintptr, dst uint64, src []byte, zero, dontwake bool) (uint64, error) {
	n := uint64(len(src))
	var err error
	var ret int64
	if zero {
		z := abi.UffdioZeropage{Range: abi.UffdioRange{Start: dst, Len: n}}
		if dontwake {
			z.Mode = abi.UFFDIO_ZEROPAGE_MODE_DONTWAKE
		}
		err, ret = ioctlZeropage(fd, &z), z.Zeropage
	} else {
		c := abi.UffdioCopy{Dst: dst, Src: addrOf(src), Len: n}
		if dontwake {
			c.Mode = abi.UFFDIO_COPY_MODE_DONTWAKE
		}
		err, ret = ioctlCopy(fd, &c), c.Copy
	}
	switch {
	case err == nil:
		return n, nil
	case ret > 0:
		return uint64(ret), err
	}
	return 0, err
}

func (s *Server) installed(ri int, page, off uint64) {
	s.pages[ri][page] = pageInstalled
	if s.rec != nil {
		s.rec.Record(off)
	}
}

func (s *Server) wakeRange(fd uintptr, start, n uint64) error {
	r := abi.UffdioRange{Start: start, Len: n}
	switch err := ioctlWake(fd, &r); err {
	case nil:
		return nil
	case unix.ESRCH:
		return errGone
	default:
		return fmt.Errorf("waking [%#x, %#x): %w", start, start+n, err)
	}
}

// remove handles REMOVE (MADV_DONTNEED/MADV_REMOVE, e.g. a balloon) and
// UNMAP events: the pages are gone from the VMM, so the range is
// unregistered (for REMOVE; an unmapped range unregisters itself) and
// later touches get fresh zero pages from the kernel, as the memory's owner
// asked. Pages in the range are never copied again.
func (s *Server) remove(fd uintptr, event uint8, start, end uint64) error {
	s.st.removes.Add(1)
	for ri, r := range s.regions.regions {
		lo, hi := max(start, r.BaseHostVirtAddr), min(end, r.end())
		// Round inward: only whole pages of this region are affected.
		lo = (lo + r.PageSize - 1) &^ (r.PageSize - 1)
		hi &^= r.PageSize - 1
		if lo >= hi {
			continue
		}
		first, last := (lo-r.BaseHostVirtAddr)/r.PageSize, (hi-r.BaseHostVirtAddr)/r.PageSize
		for p := first; p < last; p++ {
			s.pages[ri][p] = pageGone
		}
		s.st.removedBytes.Add(hi - lo)
		if event != abi.UFFD_EVENT_REMOVE {
			continue
		}
		rng := abi.UffdioRange{Start: lo, Len: hi - lo}
		switch err := ioctlUnregister(fd, &rng); err {
		case nil, unix.ENOENT, unix.EINVAL:
			// ENOENT/EINVAL: no longer mapped or registered; nothing to undo.
		case unix.ESRCH:
			return errGone
		default:
			return fmt.Errorf("unregistering removed range [%#x, %#x): %w", lo, hi, err)
		}
		s.log.Debug("unregistered removed range", "start", lo, "end", hi)
	}
	return nil
}
