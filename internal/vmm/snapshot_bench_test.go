package vmm

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/testenv"
	"github.com/thawvm/thaw/internal/uffd"
)

// Snapshot benchmarks (results and commands in docs/benchmarks/snapshot.md).
// The guest is the probe: its pattern (probe.pages) is what it has touched,
// the rest of memory is untouched, as in an idle guest.

// lineWaiter signals once its output contains want.
type lineWaiter struct {
	mu   sync.Mutex
	buf  strings.Builder
	want string
	once sync.Once
	ch   chan struct{}
}

func newLineWaiter(want string) *lineWaiter { return &lineWaiter{want: want, ch: make(chan struct{})} }

func (w *lineWaiter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.want) {
		w.once.Do(func() { close(w.ch) })
	}
	return len(p), nil
}

func (w *lineWaiter) wait(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	select {
	case <-w.ch:
	case <-time.After(timeout):
		w.mu.Lock()
		defer w.mu.Unlock()
		tb.Fatalf("no %q within %v; output:\n%s", w.want, timeout, w.buf.String())
	}
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// pausedProbe boots the probe with memMiB of memory and pauses it once it
// printed its first tick.
func pausedProbe(b *testing.B, memMiB uint64, cmdline string) *Machine {
	b.Helper()
	testenv.RequireKVM(b)
	out := newLineWaiter("probe: tick 1 ")
	m := New(Config{Kernel: probePath(b), Cmdline: cmdline, VCPUs: 1, MemMiB: memMiB, Serial: out}, discardLog())
	b.Cleanup(func() { m.Close() })
	if err := m.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	out.wait(b, 60*time.Second)
	if err := m.Pause(); err != nil {
		b.Fatal(err)
	}
	return m
}

// probeTemplate snapshots a paused probe into a fresh directory.
func probeTemplate(b *testing.B, memMiB uint64, cmdline string) (statePath, memPath string) {
	b.Helper()
	m := pausedProbe(b, memMiB, cmdline)
	dir := b.TempDir()
	statePath, memPath = filepath.Join(dir, "vmstate"), filepath.Join(dir, "mem")
	if err := m.CreateSnapshot(context.Background(), fcapi.SnapshotCreateParams{SnapshotPath: statePath, MemFilePath: memPath}); err != nil {
		b.Fatal(err)
	}
	return statePath, memPath
}

var benchSizes = []uint64{128, 512, 2048}

// BenchmarkSnapshotCreate measures PUT /snapshot/create on a paused probe
// (Machine.CreateSnapshot: vCPU and VM state, vmstate file, sparse memory
// file) for each memory size; the guest has touched 1 MiB of pattern plus
// its boot pages.
func BenchmarkSnapshotCreate(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprintf("mem=%dMiB", size), func(b *testing.B) {
			m := pausedProbe(b, size, "probe.pages=256 probe.ticks=0 probe.spin=1000")
			dir := b.TempDir()
			p := fcapi.SnapshotCreateParams{SnapshotPath: filepath.Join(dir, "vmstate"), MemFilePath: filepath.Join(dir, "mem")}
			for b.Loop() {
				if err := m.CreateSnapshot(context.Background(), p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchPageServer serves one VMM at a time from memPath, in this process.
type benchPageServer struct {
	l       *uffd.Listener
	src     *uffd.FileSource
	cfg     uffd.Config
	cancel  context.CancelFunc
	done    chan error
	started bool
}

func newBenchPageServer(b *testing.B, memPath string, prefetch bool) *benchPageServer {
	b.Helper()
	testenv.RequireUFFD(b)
	l, err := uffd.Listen(filepath.Join(b.TempDir(), "uffd.sock"))
	if err != nil {
		b.Fatal(err)
	}
	src, err := uffd.OpenFile(memPath)
	if err != nil {
		b.Fatal(err)
	}
	ps := &benchPageServer{l: l, src: src, cfg: uffd.Config{DisablePrefetch: !prefetch}}
	b.Cleanup(func() { ps.stop(b); l.Close(); src.Close() })
	return ps
}

// serveNext accepts the next VMM in the background and serves it until
// stop.
func (ps *benchPageServer) serveNext() {
	ctx, cancel := context.WithCancel(context.Background())
	ps.cancel, ps.done, ps.started = cancel, make(chan error, 1), true
	go func() {
		hs, err := ps.l.Accept(ctx)
		if err != nil {
			ps.done <- err
			return
		}
		srv, err := uffd.NewServer(uffd.ServerParams{Handshake: hs, Source: ps.src, Config: ps.cfg})
		if err != nil {
			hs.Close()
			ps.done <- err
			return
		}
		err = srv.Serve(ctx)
		srv.Close()
		ps.done <- err
	}()
}

func (ps *benchPageServer) stop(b *testing.B) {
	if !ps.started {
		return
	}
	ps.cancel()
	if err := <-ps.done; err != nil && ps.cancel == nil {
		b.Error(err)
	}
	ps.started = false
}

// loadMode is a memory backend as the benchmarks use it.
type loadMode struct {
	name     string
	backend  fcapi.MemBackendType
	prefetch bool
}

var loadModes = []loadMode{
	{"File", fcapi.MemBackendFile, false},
	{"Uffd", fcapi.MemBackendUffd, false},
	{"UffdPrefetch", fcapi.MemBackendUffd, true},
}

// restoreOnce loads the template into a fresh machine (and resumes it
// when out is set, waiting for its output), then closes it. Only the load
// (and the wait for output) is timed.
func restoreOnce(b *testing.B, statePath, memPath string, mode loadMode, ps *benchPageServer, out func() *lineWaiter) {
	mb := &fcapi.MemBackend{BackendType: mode.backend, BackendPath: memPath}
	if ps != nil {
		mb.BackendPath = ps.l.Path()
		ps.serveNext()
	}
	var w *lineWaiter
	cfg := Config{}
	if out != nil {
		w = out()
		cfg.Serial = w
	}
	m := New(cfg, discardLog())
	if err := m.LoadSnapshot(context.Background(), fcapi.SnapshotLoadParams{SnapshotPath: statePath, MemBackend: mb}); err != nil {
		b.Fatal(err)
	}
	if w != nil {
		if err := m.Resume(); err != nil {
			b.Fatal(err)
		}
		w.wait(b, 60*time.Second)
	}
	b.StopTimer()
	if err := m.Close(); err != nil {
		b.Fatal(err)
	}
	if ps != nil {
		ps.stop(b)
	}
	b.StartTimer()
}

// BenchmarkSnapshotLoad measures PUT /snapshot/load minus HTTP
// (Machine.LoadSnapshot: read the vmstate, map or register memory, the
// Uffd handshake and first served page, KVM VM and vCPUs, state restore)
// for each size with File and Uffd (on demand) memory.
func BenchmarkSnapshotLoad(b *testing.B) {
	for _, size := range benchSizes {
		statePath, memPath := probeTemplate(b, size, "probe.pages=256 probe.ticks=0 probe.spin=1000")
		for _, mode := range loadModes[:2] {
			b.Run(fmt.Sprintf("%s/mem=%dMiB", mode.name, size), func(b *testing.B) {
				var ps *benchPageServer
				if mode.backend == fcapi.MemBackendUffd {
					ps = newBenchPageServer(b, memPath, mode.prefetch)
				}
				for b.Loop() {
					restoreOnce(b, statePath, memPath, mode, ps, nil)
				}
			})
		}
	}
}

// BenchmarkRestoreToOutput measures load + resume until the restored
// probe's first serial output (its next tick line, after re-reading its
// 16-page pattern), with File, Uffd on demand and Uffd with sequential
// prefetch. The pattern is small because PVM emulates the guest's
// instructions (about 8 us per checksum iteration here): a large one would
// measure the emulator, not the restore.
func BenchmarkRestoreToOutput(b *testing.B) {
	const size = 128
	statePath, memPath := probeTemplate(b, size, "probe.pages=16 probe.ticks=0 probe.spin=100")
	for _, mode := range loadModes {
		b.Run(mode.name, func(b *testing.B) {
			var ps *benchPageServer
			if mode.backend == fcapi.MemBackendUffd {
				ps = newBenchPageServer(b, memPath, mode.prefetch)
			}
			for b.Loop() {
				restoreOnce(b, statePath, memPath, mode, ps, func() *lineWaiter { return newLineWaiter("") })
			}
		})
	}
}

// BenchmarkIdleClonePSS restores 4 clones of one template in this process
// with File and with Uffd (on demand), lets each read its 1 MiB pattern
// once (one tick), pauses them and reports the proportional set size of
// each clone's guest memory (from /proc/self/smaps): with File, clean
// pages are the page cache's and shared, so each clone is charged a
// quarter of them; with Uffd every served page is a private copy. The VMM
// process's own memory (Go runtime, a few MiB) is not included.
func BenchmarkIdleClonePSS(b *testing.B) {
	const clones = 4
	statePath, memPath := probeTemplate(b, 128, "probe.pages=256 probe.ticks=0 probe.spin=100")
	for _, mode := range loadModes[:2] {
		b.Run(mode.name, func(b *testing.B) {
			var pss float64
			for b.Loop() {
				pss = clonePSS(b, statePath, memPath, mode, clones)
			}
			b.ReportMetric(pss, "PSS-KiB/clone")
		})
	}
}

func clonePSS(b *testing.B, statePath, memPath string, mode loadMode, clones int) float64 {
	var ms []*Machine
	defer func() {
		for _, m := range ms {
			m.Close()
		}
	}()
	for range clones {
		mb := &fcapi.MemBackend{BackendType: mode.backend, BackendPath: memPath}
		if mode.backend == fcapi.MemBackendUffd {
			ps := newBenchPageServer(b, memPath, false)
			ps.serveNext()
			mb.BackendPath = ps.l.Path()
		}
		w := newLineWaiter(" sum=")
		m := New(Config{Serial: w}, discardLog())
		ms = append(ms, m)
		if err := m.LoadSnapshot(context.Background(), fcapi.SnapshotLoadParams{SnapshotPath: statePath, MemBackend: mb}); err != nil {
			b.Fatal(err)
		}
		if err := m.Resume(); err != nil {
			b.Fatal(err)
		}
		w.wait(b, 60*time.Second)
		if err := m.Pause(); err != nil {
			b.Fatal(err)
		}
	}
	var total uint64
	for _, m := range ms {
		m.mu.Lock()
		regions := m.hw.mem.Regions()
		m.mu.Unlock()
		for _, r := range regions {
			kib, err := mappingPSS(r.HostAddr())
			if err != nil {
				b.Fatal(err)
			}
			total += kib
		}
	}
	return float64(total) / float64(clones)
}

// mappingPSS returns the Pss (KiB) of the mapping starting at addr in
// /proc/self/smaps.
func mappingPSS(addr uint64) (uint64, error) {
	data, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return 0, err
	}
	prefix := fmt.Sprintf("%x-", addr)
	in := false
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, prefix) {
			in = true
			continue
		}
		if in {
			if v, ok := strings.CutPrefix(line, "Pss:"); ok {
				var kib uint64
				fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kib)
				return kib, nil
			}
		}
	}
	return 0, fmt.Errorf("no mapping at %#x in /proc/self/smaps", addr)
}
