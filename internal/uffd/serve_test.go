package uffd_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/testenv"
	"github.com/thawvm/thaw/internal/uffd"
	"github.com/thawvm/thaw/internal/uffd/uffdtest"
)

func TestMain(m *testing.M) {
	uffdtest.MaybeRunVMM()
	os.Exit(m.Run())
}

// memFile writes a deterministic memory file and maps it.
func memFile(t testing.TB, size int64, seed uint64) (string, *uffd.FileSource) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mem")
	if err := uffdtest.WriteMemoryFile(path, size, seed); err != nil {
		t.Fatal(err)
	}
	src, err := uffd.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return path, src
}

// noLeaks fails t if goroutines or file descriptors started during the test
// outlive it.
func noLeaks(t testing.TB) {
	t.Helper()
	g0, fd0 := runtime.NumGoroutine(), openFDs(t)
	t.Cleanup(func() {
		deadline := time.Now().Add(3 * time.Second)
		for {
			g, fd := runtime.NumGoroutine(), openFDs(t)
			if g <= g0 && fd <= fd0 {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<16)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("leak: %d goroutines (was %d), %d fds (was %d)\n%s", g, g0, fd, fd0, buf)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func openFDs(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// session is one page server serving one fake VMM.
type session struct {
	t      testing.TB
	l      *uffd.Listener
	proc   *uffdtest.Proc
	srv    *uffd.Server
	cancel context.CancelFunc
	done   chan error
}

// startSession listens, starts a fake VMM following spec, accepts its
// handshake and starts serving it with params (Handshake and Source filled
// in here when unset).
func startSession(t testing.TB, spec uffdtest.Spec, src uffd.Source, params uffd.ServerParams) *session {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "uffd.sock")
	l, err := uffd.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	spec.Socket = sock
	proc, err := uffdtest.Start(spec)
	if err != nil {
		l.Close()
		t.Fatal(err)
	}
	s := &session{t: t, l: l, proc: proc, done: make(chan error, 1)}
	t.Cleanup(s.close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hs, err := l.Accept(ctx)
	if err != nil {
		t.Fatalf("accepting the handshake: %v", err)
	}
	if hs.PeerPID != proc.PID() {
		t.Errorf("handshake peer pid %d, want the fake VMM's %d", hs.PeerPID, proc.PID())
	}
	params.Handshake, params.Source = hs, src
	s.srv, err = uffd.NewServer(params)
	if err != nil {
		hs.Close()
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(context.Background())
	s.cancel = scancel
	go func() { s.done <- s.srv.Serve(sctx) }()
	return s
}

// finish waits for the fake VMM, then for Serve to stop on its own (the VMM
// went away), and returns both outcomes.
func (s *session) finish() (*uffdtest.Result, uffd.Stats) {
	s.t.Helper()
	res, err := s.proc.Wait()
	if err != nil {
		s.t.Fatal(err)
	}
	if err := s.serveResult(10 * time.Second); err != nil {
		s.t.Fatalf("Serve: %v", err)
	}
	return res, s.srv.Stats()
}

// serveResult waits up to d for Serve to return.
func (s *session) serveResult(d time.Duration) error {
	s.t.Helper()
	select {
	case err := <-s.done:
		s.done <- err
		return err
	case <-time.After(d):
		s.t.Fatalf("Serve did not return within %v", d)
		return nil
	}
}

func (s *session) close() {
	s.proc.Kill()
	if s.cancel != nil {
		s.cancel()
		<-s.done
		s.done <- nil
	}
	if s.srv != nil {
		s.srv.Close()
	}
	s.l.Close()
}

func oneRegion(size uint64) []uffdtest.Layout { return []uffdtest.Layout{{Offset: 0, Size: size}} }

func TestServeFaults(t *testing.T) {
	testenv.RequireUFFD(t)
	const size = 16 << 20
	tests := []struct {
		name    string
		regions []uffdtest.Layout
		threads int
		pattern string
		writes  bool
	}{
		{"one region", oneRegion(size), 4, uffdtest.Disjoint, false},
		{"two regions with a hole", []uffdtest.Layout{{Offset: 0, Size: 6 << 20}, {Offset: 6 << 20, Size: size - 6<<20}}, 8, uffdtest.Random, false},
		{"reads and writes", []uffdtest.Layout{{Offset: 0, Size: 10 << 20}, {Offset: 10 << 20, Size: size - 10<<20}}, 8, uffdtest.Random, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			noLeaks(t)
			path, src := memFile(t, size, 1)
			s := startSession(t, uffdtest.Spec{MemFile: path, Regions: tt.regions, Threads: tt.threads, Pattern: tt.pattern, Writes: tt.writes, Seed: 7},
				src, uffd.ServerParams{Config: uffd.Config{DisablePrefetch: true}})
			res, st := s.finish()
			pages := uint64(size / 4096)
			if res.Touches != pages {
				t.Errorf("fake VMM touched %d pages, want %d", res.Touches, pages)
			}
			if st.FaultPages != pages || st.FaultBytes != size {
				t.Errorf("served %d pages (%d bytes) on demand, want %d (%d)", st.FaultPages, st.FaultBytes, pages, size)
			}
			if st.PrefetchedPages != 0 {
				t.Errorf("prefetched %d pages with prefetch disabled", st.PrefetchedPages)
			}
			if got := st.Latency.Count(); got != st.Faults {
				t.Errorf("latency histogram holds %d faults, want %d", got, st.Faults)
			}
		})
	}
}

func TestServe64ThreadsRacingOnSamePages(t *testing.T) {
	testenv.RequireUFFD(t)
	noLeaks(t)
	const size = 4 << 20
	path, src := memFile(t, size, 2)
	s := startSession(t, uffdtest.Spec{MemFile: path, Regions: oneRegion(size), Threads: 64, Pattern: uffdtest.Same},
		src, uffd.ServerParams{Config: uffd.Config{DisablePrefetch: true}})
	res, st := s.finish()
	if want := uint64(64 * size / 4096); res.Touches != want {
		t.Errorf("touched %d pages, want %d", res.Touches, want)
	}
	if st.FaultPages != size/4096 {
		t.Errorf("installed %d pages, want each of the %d exactly once", st.FaultPages, size/4096)
	}
	// Several threads fault on each page at once; one copy wins and the
	// others must be answered with a wake (or they would hang the child).
	// A thread's fault message can still be queued after another thread's
	// copy has woken it; if the child exits before the server reads it,
	// that fault meets a gone address space and is neither an install nor
	// an EEXIST. Each of the 64 threads has at most one such fault.
	if answered := st.FaultPages + st.EEXIST; st.EEXIST == 0 || st.Faults < answered || st.Faults > answered+64 {
		t.Errorf("faults=%d installs=%d eexist=%d: want eexist > 0 and installs + eexist ≤ faults ≤ installs + eexist + 64 (one late fault per thread)", st.Faults, st.FaultPages, st.EEXIST)
	}
}

func TestPrefetchRacesFaults(t *testing.T) {
	testenv.RequireUFFD(t)
	noLeaks(t)
	const size = 32 << 20
	path, src := memFile(t, size, 3)
	s := startSession(t, uffdtest.Spec{MemFile: path, Regions: []uffdtest.Layout{{Offset: 0, Size: 20 << 20}, {Offset: 20 << 20, Size: 12 << 20}}, Threads: 8, Pattern: uffdtest.Random, Writes: true, Seed: 3},
		src, uffd.ServerParams{Config: uffd.Config{PrefetchRunBytes: 256 << 10}})
	_, st := s.finish()
	if st.PrefetchRuns == 0 {
		t.Errorf("no prefetch runs: %v", st)
	}
	if got := st.PrefetchedPages + st.FaultPages; got != size/4096 {
		t.Errorf("prefetched %d + faulted %d = %d pages, want every page installed once (%d)", st.PrefetchedPages, st.FaultPages, got, size/4096)
	}
	t.Logf("%v", st)
}

func TestRemoveEventsUnregister(t *testing.T) {
	testenv.RequireUFFD(t)
	noLeaks(t)
	const size = 8 << 20
	path, src := memFile(t, size, 4)
	s := startSession(t, uffdtest.Spec{MemFile: path, Regions: oneRegion(size), Threads: 4, Pattern: uffdtest.Disjoint, RemoveBytes: 1 << 20},
		src, uffd.ServerParams{Config: uffd.Config{DisablePrefetch: true}})
	res, st := s.finish()
	if res.Removed != 1<<20 {
		t.Errorf("fake VMM removed %d bytes, want %d", res.Removed, 1<<20)
	}
	if st.RemoveEvents == 0 || st.RemovedBytes != 1<<20 {
		t.Errorf("remove events=%d bytes=%d, want ≥1 event covering %d bytes", st.RemoveEvents, st.RemovedBytes, 1<<20)
	}
}

// slowSource delays every read, so that faults pile up unanswered.
type slowSource struct {
	uffd.Source
	delay time.Duration
}

func (s slowSource) Bytes(off, n uint64) ([]byte, error) {
	time.Sleep(s.delay)
	return s.Source.Bytes(off, n)
}

func waitFaults(t *testing.T, srv *uffd.Server, n uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for srv.Stats().Faults < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d faults after 10s, want %d", srv.Stats().Faults, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestVMMKilledMidServe(t *testing.T) {
	testenv.RequireUFFD(t)
	noLeaks(t)
	const size = 16 << 20
	path, src := memFile(t, size, 5)
	s := startSession(t, uffdtest.Spec{MemFile: path, Regions: oneRegion(size), Threads: 16, Pattern: uffdtest.Random, Hang: true},
		slowSource{src, 200 * time.Microsecond}, uffd.ServerParams{Config: uffd.Config{DisablePrefetch: true}})
	waitFaults(t, s.srv, 50)
	s.proc.Kill()
	if err := s.serveResult(10 * time.Second); err != nil {
		t.Fatalf("Serve after the VMM died: %v, want nil", err)
	}
}

func TestCancelWithFaultsPending(t *testing.T) {
	testenv.RequireUFFD(t)
	noLeaks(t)
	const size = 16 << 20
	path, src := memFile(t, size, 6)
	s := startSession(t, uffdtest.Spec{MemFile: path, Regions: oneRegion(size), Threads: 16, Pattern: uffdtest.Random, Hang: true},
		slowSource{src, 200 * time.Microsecond}, uffd.ServerParams{Config: uffd.Config{DisablePrefetch: true}})
	waitFaults(t, s.srv, 50)
	s.cancel()
	if err := s.serveResult(5 * time.Second); err != nil {
		t.Fatalf("Serve after cancel: %v, want nil", err)
	}
	if st := s.srv.Stats(); st.Faults >= size/4096 {
		t.Fatalf("all %d faults served before cancel; the test did not cancel with faults pending", st.Faults)
	}
}

// TestIdleServeWakes checks that a page server with nothing to do sleeps
// until something happens rather than waking periodically: with a poll
// interval far longer than the test waits, cancelling its context and
// closing it still stop it at once.
func TestIdleServeWakes(t *testing.T) {
	testenv.RequireUFFD(t)
	for _, how := range []string{"cancel", "close"} {
		t.Run(how, func(t *testing.T) {
			noLeaks(t)
			const size = 1 << 20
			path, src := memFile(t, size, 7)
			s := startSession(t, uffdtest.Spec{MemFile: path, Regions: oneRegion(size), Threads: 1, Pattern: uffdtest.Random, Hang: true},
				src, uffd.ServerParams{Config: uffd.Config{PollInterval: 10 * time.Second}})
			deadline := time.Now().Add(10 * time.Second)
			for !s.srv.Stats().PrefetchDone {
				if time.Now().After(deadline) {
					t.Fatal("prefetch not done after 10s")
				}
				time.Sleep(time.Millisecond)
			}
			time.Sleep(50 * time.Millisecond) // let Serve reach poll(2)
			if how == "cancel" {
				s.cancel()
			} else {
				s.srv.Close()
			}
			// Within half the poll interval: only the wake can explain it.
			if err := s.serveResult(5 * time.Second); err != nil {
				t.Fatalf("Serve after %s: %v, want nil", how, err)
			}
		})
	}
}

// TestTwoServersOpenCloseRapidly runs two page servers side by side for many
// short sessions, each VMM with its own memory file. The uffd fd numbers are
// reused from round to round; a server that touched a closed number would
// serve one VMM's faults with the other's pages, which the VMMs detect.
func TestTwoServersOpenCloseRapidly(t *testing.T) {
	testenv.RequireUFFD(t)
	noLeaks(t)
	const size = 2 << 20
	pathA, srcA := memFile(t, size, 100)
	pathB, srcB := memFile(t, size, 200)
	rounds := 8
	if testing.Short() {
		rounds = 3
	}
	for round := range rounds {
		errs := make(chan error, 2)
		for _, m := range []struct {
			path string
			src  uffd.Source
		}{{pathA, srcA}, {pathB, srcB}} {
			go func() {
				errs <- func() error {
					sock := filepath.Join(t.TempDir(), "s")
					l, err := uffd.Listen(sock)
					if err != nil {
						return err
					}
					defer l.Close()
					proc, err := uffdtest.Start(uffdtest.Spec{Socket: sock, MemFile: m.path, Regions: oneRegion(size), Threads: 4, Pattern: uffdtest.Random, Seed: uint64(round)})
					if err != nil {
						return err
					}
					defer proc.Kill()
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					defer cancel()
					hs, err := l.Accept(ctx)
					if err != nil {
						return err
					}
					srv, err := uffd.NewServer(uffd.ServerParams{Handshake: hs, Source: m.src, Config: uffd.Config{PrefetchRunBytes: 64 << 10}})
					if err != nil {
						hs.Close()
						return err
					}
					done := make(chan error, 1)
					go func() { done <- srv.Serve(ctx) }()
					_, werr := proc.Wait()
					serr := <-done
					return errors.Join(werr, serr, srv.Close())
				}()
			}()
		}
		for range 2 {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
	}
}

func TestNewServerChecksRegionsAgainstFile(t *testing.T) {
	testenv.RequireUFFD(t)
	noLeaks(t)
	_, src := memFile(t, 1<<20, 7)
	tests := []struct {
		name    string
		regions []uffd.Region
		want    string
	}{
		{"region past the memory file", []uffd.Region{{BaseHostVirtAddr: 1 << 30, Size: 1 << 20, Offset: 4 << 20, PageSize: 4096}}, "starts past the end"},
		{"truncated memory file", []uffd.Region{{BaseHostVirtAddr: 1 << 30, Size: 2 << 20, Offset: 0, PageSize: 4096}}, "file is truncated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hs := fakeHandshake(t, tt.regions)
			defer hs.Close()
			_, err := uffd.NewServer(uffd.ServerParams{Handshake: hs, Source: src})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewServer: got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestFaultOutsideHandshakeRegionsFails: the VMM registers two regions but
// its handshake names only one; the first fault in the other must end
// Serve with an error naming the address, not hang.
func TestFaultOutsideHandshakeRegionsFails(t *testing.T) {
	testenv.RequireUFFD(t)
	noLeaks(t)
	const size = 4 << 20
	path, src := memFile(t, size, 8)
	s := startSession(t, uffdtest.Spec{MemFile: path, Regions: []uffdtest.Layout{{Offset: 0, Size: 2 << 20}, {Offset: 2 << 20, Size: 2 << 20}},
		Threads: 2, Pattern: uffdtest.Disjoint, OmitLastRegion: true, Hang: true},
		src, uffd.ServerParams{Config: uffd.Config{DisablePrefetch: true}})
	err := s.serveResult(10 * time.Second)
	if err == nil || !strings.Contains(err.Error(), "outside every registered region") {
		t.Fatalf("Serve: got %v, want a fault-outside-regions error", err)
	}
}

// TestRemoveRacesFaults discards memory while other threads fault and the
// prefetcher copies: copies during a pending REMOVE get EAGAIN and must be
// retried after the event is drained, and the discarded ranges must read
// back as zeros.
func TestRemoveRacesFaults(t *testing.T) {
	testenv.RequireUFFD(t)
	noLeaks(t)
	const size = 16 << 20
	path, src := memFile(t, size, 13)
	s := startSession(t, uffdtest.Spec{MemFile: path, Regions: oneRegion(size), Threads: 8, Pattern: uffdtest.Random, Writes: true, RemoveDuring: 64, Seed: 13},
		src, uffd.ServerParams{Config: uffd.Config{PrefetchRunBytes: 16 << 10}})
	res, st := s.finish()
	if res.Removed != 4<<20 {
		t.Errorf("fake VMM removed %d bytes, want %d", res.Removed, 4<<20)
	}
	if st.RemoveEvents != 64 {
		t.Errorf("got %d REMOVE events, want one per discarded chunk (64)", st.RemoveEvents)
	}
	t.Logf("%v", st)
}

// TestFakeVMMDetectsWrongPages proves the fake VMM's check can fail: served
// from another memory file of the same size, it must report mismatches.
func TestFakeVMMDetectsWrongPages(t *testing.T) {
	testenv.RequireUFFD(t)
	noLeaks(t)
	const size = 2 << 20
	path, _ := memFile(t, size, 15)
	_, other := memFile(t, size, 16)
	s := startSession(t, uffdtest.Spec{MemFile: path, Regions: oneRegion(size), Threads: 2, Pattern: uffdtest.Disjoint},
		other, uffd.ServerParams{})
	res, err := s.proc.Wait()
	if err == nil || !strings.Contains(err.Error(), "differing from the memory file") {
		t.Fatalf("fake VMM served the wrong file: got %v, want a mismatch error", err)
	}
	// Zero blocks are the same in both files; every other page differs.
	if want := uint64(size/4096) * 7 / 8; res == nil || res.Mismatches != want {
		t.Errorf("got %+v, want %d mismatching pages", res, want)
	}
	if err := s.serveResult(10 * time.Second); err != nil {
		t.Errorf("Serve: %v", err)
	}
}
