package uffd

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	abi "github.com/thawvm/thaw/internal/abi/uffd"
	"github.com/thawvm/thaw/internal/testenv"
)

// inProcess builds a server over anonymous memory of this process, so that
// the kernel paths (EEXIST, partial copies, ENOENT after unregister) can be
// driven one call at a time. No thread faults: the calls stand in for what
// a fault or the prefetcher would do.
func inProcess(t *testing.T, pages int, zero ...int) (*Server, []byte, []byte) {
	t.Helper()
	testenv.RequireUFFD(t)
	size := pages * 4096
	content := make([]byte, size)
	for i := range content {
		content[i] = byte(i*7 + i/4096)
	}
	for _, p := range zero {
		clear(content[p*4096 : (p+1)*4096])
	}
	path := filepath.Join(t.TempDir(), "mem")
	if err := os.WriteFile(path, content, 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	r := Region{BaseHostVirtAddr: uint64(uintptr(unsafe.Pointer(&mem[0]))), Size: uint64(size), PageSize: 4096}
	f, err := Register([]Region{r})
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewServer(ServerParams{Handshake: &Handshake{Regions: []Region{r}, Uffd: f}, Source: src})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, mem, content
}

func TestFaultEEXISTWakes(t *testing.T) {
	s, mem, content := inProcess(t, 4)
	base := s.regions.regions[0].BaseHostVirtAddr
	for i := range 2 {
		err := control(s.uffd, func(fd uintptr) error {
			again, err := s.serveFault(fd, base+4096+123, 0, time.Now())
			if again {
				t.Errorf("fault %d deferred", i)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	st := s.Stats()
	if st.FaultPages != 1 || st.EEXIST != 1 {
		t.Errorf("installs=%d eexist=%d, want 1 and 1", st.FaultPages, st.EEXIST)
	}
	if !bytes.Equal(mem[4096:8192], content[4096:8192]) {
		t.Error("installed page differs from the file")
	}
}

func TestFaultOutsideRegionsIsFatal(t *testing.T) {
	s, _, _ := inProcess(t, 2)
	err := control(s.uffd, func(fd uintptr) error {
		_, err := s.serveFault(fd, 4096, 0, time.Now())
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "outside every registered region") {
		t.Errorf("got %v, want a fault-outside-regions error", err)
	}
}

// TestPrefetchPartialCopy makes the kernel stop a multi-page copy at a page
// that is already present: it copies the pages before it (returning EAGAIN
// with the count), answers EEXIST for that page, and the prefetcher resumes
// after it.
func TestPrefetchPartialCopy(t *testing.T) {
	s, mem, content := inProcess(t, 16)
	base := s.regions.regions[0].BaseHostVirtAddr
	if err := control(s.uffd, func(fd uintptr) error {
		_, err := s.serveFault(fd, base+3*4096, 0, time.Now())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s.pages[0][3] = pageMissing // hide the install from the prefetcher
	for !s.pf.done {
		if err := control(s.uffd, s.prefetchRun); err != nil {
			t.Fatal(err)
		}
	}
	st := s.Stats()
	if st.PrefetchedPages != 15 || st.PrefetchRuns != 2 {
		t.Errorf("prefetched %d pages in %d runs, want 15 in 2", st.PrefetchedPages, st.PrefetchRuns)
	}
	if !bytes.Equal(mem, content) {
		t.Error("memory differs from the file after prefetch")
	}
}

// TestRemoveUnregisters checks that after a REMOVE the range is no longer
// registered (the kernel fills it with zeros) and never copied again.
func TestRemoveUnregisters(t *testing.T) {
	s, mem, _ := inProcess(t, 8)
	base := s.regions.regions[0].BaseHostVirtAddr
	if err := control(s.uffd, func(fd uintptr) error { return s.remove(fd, abi.UFFD_EVENT_REMOVE, base+2*4096, base+4*4096) }); err != nil {
		t.Fatal(err)
	}
	// Touching a removed page must not block: it is unregistered.
	if mem[2*4096+5] != 0 || mem[3*4096] != 0 {
		t.Error("removed pages read non-zero")
	}
	for !s.pf.done {
		if err := control(s.uffd, s.prefetchRun); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.PrefetchedPages != 6 || st.RemovedBytes != 2*4096 {
		t.Errorf("prefetched %d pages, removed %d bytes; want 6 and 8192", st.PrefetchedPages, st.RemovedBytes)
	}
}

func TestCloseStopsServe(t *testing.T) {
	s, _, _ := inProcess(t, 4)
	done := make(chan error, 1)
	go func() { done <- s.Serve(t.Context()) }()
	time.Sleep(20 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after Close: %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return within 5s of Close")
	}
}

// TestZeroPages: all-zero pages are mapped as the zero page by read faults
// and by the prefetcher (in runs of their own), but copied for write faults.
func TestZeroPages(t *testing.T) {
	s, mem, content := inProcess(t, 16, 4, 5, 6, 7, 9)
	base := s.regions.regions[0].BaseHostVirtAddr
	err := control(s.uffd, func(fd uintptr) error {
		if _, err := s.serveFault(fd, base+9*4096, abi.UFFD_PAGEFAULT_FLAG_WRITE, time.Now()); err != nil {
			return err
		}
		_, err := s.serveFault(fd, base+5*4096, 0, time.Now())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.ZeroPages != 1 || st.FaultPages != 2 {
		t.Fatalf("zero pages %d, fault installs %d; want 1 (the read fault) and 2", st.ZeroPages, st.FaultPages)
	}
	for !s.pf.done {
		if err := control(s.uffd, s.prefetchRun); err != nil {
			t.Fatal(err)
		}
	}
	// Left for the prefetcher: 0-3 copy, 4 zero, 6-7 zero, 8 copy, 10-15 copy.
	st := s.Stats()
	if st.PrefetchedPages != 14 || st.PrefetchRuns != 5 || st.ZeroPages != 4 {
		t.Errorf("prefetched %d pages in %d runs, %d zero pages in all; want 14 in 5 runs and 4", st.PrefetchedPages, st.PrefetchRuns, st.ZeroPages)
	}
	if !bytes.Equal(mem, content) {
		t.Error("memory differs from the file")
	}
	mem[5*4096] = 1 // a zero page takes writes (copy on write)
	if mem[5*4096] != 1 {
		t.Error("write to a zero page lost")
	}
}

// TestPrefetchExpandsLargePageLog replays a log recorded with 2 MiB pages
// over a region of 4 KiB pages: every small page of the record is fetched.
func TestPrefetchExpandsLargePageLog(t *testing.T) {
	s, mem, content := inProcess(t, 1024)
	s.pf = newPrefetcher(&s.regions, &AccessLog{PageSize: PageSize2M, FileSize: 4 << 20, Offsets: []uint64{2 << 20}})
	for !s.pf.done {
		if err := control(s.uffd, s.prefetchRun); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.PrefetchedPages != 512 {
		t.Errorf("prefetched %d pages, want the 512 of the logged 2 MiB", st.PrefetchedPages)
	}
	if !bytes.Equal(mem[2<<20:], content[2<<20:]) {
		t.Error("prefetched half differs from the file")
	}
}
