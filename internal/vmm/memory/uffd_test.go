package memory

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/thawvm/thaw/internal/uffd"
)

// served is Userfault-backed guest memory registered with a userfaultfd
// and an in-process page server (internal/uffd's, prefetch off) for it,
// over a memory file of known content: the VMM inside thaw-shim.
type served struct {
	mem     *Memory
	content []byte       // the memory file's bytes
	uffd    *os.File     // the VMM's copy of the userfaultfd
	srv     *uffd.Server // not serving until start
	stop    context.CancelFunc
	done    chan error
}

// zeroPageMod: pages p with p%4 == zeroPageMod are all zeros in the
// memory file; the rest hold no zero byte.
const zeroPageMod = 3

// newServed sets up size bytes of served memory in dir. The page server
// does not run until start.
func newServed(dir string, size uint64) (_ *served, err error) {
	s := &served{content: make([]byte, size)}
	for off := uint64(0); off < size; off += 8 {
		if off/PageSize%4 == zeroPageMod {
			continue // all-zero: the page server maps the zero page
		}
		copy(s.content[off:], fmt.Sprintf("%08x", off/8)) // unique per 8 bytes
	}
	path := filepath.Join(dir, "mem")
	if err := os.WriteFile(path, s.content, 0o600); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if s.mem, err = New(size, Backing{Userfault: true}); err != nil {
		return nil, err
	}
	var regions []uffd.Region
	for _, r := range s.mem.Regions() {
		regions = append(regions, uffd.Region{BaseHostVirtAddr: r.HostAddr(), Size: r.Size, Offset: r.FileOffset, PageSize: uffd.PageSize4K})
	}
	if s.uffd, err = uffd.Register(regions); err != nil {
		return nil, err
	}
	l, err := uffd.Listen(filepath.Join(dir, "uffd.sock"))
	if err != nil {
		return nil, err
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sent := make(chan error, 1)
	go func() { sent <- uffd.SendHandshakeTo(ctx, l.Path(), regions, s.uffd) }()
	h, err := l.Accept(ctx)
	if serr := <-sent; err == nil {
		err = serr
	}
	if err != nil {
		if h != nil {
			h.Close()
		}
		return nil, err
	}
	src, err := uffd.OpenFile(path)
	if err != nil {
		h.Close()
		return nil, err
	}
	// The source stays mapped until the process ends: tests are short.
	s.srv, err = uffd.NewServer(uffd.ServerParams{Handshake: h, Source: src, Config: uffd.Config{DisablePrefetch: true}})
	if err != nil {
		h.Close()
		src.Close()
		return nil, err
	}
	return s, nil
}

// start runs the page server in a goroutine until close.
func (s *served) start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.stop, s.done = cancel, make(chan error, 1)
	go func() { s.done <- s.srv.Serve(ctx) }()
}

// check reports whether guest memory [off, off+n) of the first region
// holds the memory file's bytes, reading it through Slice.
func (s *served) check(off, n uint64) error {
	b, err := s.mem.Slice(off, n)
	if err != nil {
		return err
	}
	if !bytes.Equal(b, s.content[off:off+n]) {
		return fmt.Errorf("guest memory [%#x, +%#x) differs from the memory file", off, n)
	}
	return nil
}

func (s *served) close() error {
	var errs []error
	if s.stop != nil {
		s.stop()
		if err := <-s.done; err != nil && !errors.Is(err, context.Canceled) {
			errs = append(errs, fmt.Errorf("page server: %w", err))
		}
	}
	if s.srv != nil {
		errs = append(errs, s.srv.Close())
	}
	if s.uffd != nil {
		errs = append(errs, s.uffd.Close())
	}
	if s.mem != nil {
		errs = append(errs, s.mem.Close())
	}
	return errors.Join(errs...)
}
