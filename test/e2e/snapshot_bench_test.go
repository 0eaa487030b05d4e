package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/testenv"
	"github.com/thawvm/thaw/internal/uffd"
	"github.com/thawvm/thaw/internal/vmm"
)

// tickWriter closes ch once the output holds a tick line.
type tickWriter struct {
	mu   sync.Mutex
	buf  strings.Builder
	once sync.Once
	ch   chan struct{}
}

func (w *tickWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), "probe: tick 1 ") {
		w.once.Do(func() { close(w.ch) })
	}
	return len(p), nil
}

// benchTemplate snapshots the probe (memMiB, 1 vCPU) with an in-process
// machine and returns the vmstate and memory file paths.
func benchTemplate(b *testing.B, memMiB uint64) (string, string) {
	b.Helper()
	testenv.RequireKVM(b)
	w := &tickWriter{ch: make(chan struct{})}
	m := vmm.New(vmm.Config{Kernel: probeELF(b), Cmdline: "probe.pages=256 probe.ticks=0 probe.spin=1000", VCPUs: 1, MemMiB: memMiB, Serial: w},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer m.Close()
	if err := m.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	select {
	case <-w.ch:
	case <-time.After(60 * time.Second):
		b.Fatal("probe did not tick within 60s")
	}
	if err := m.Pause(); err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	state, mem := filepath.Join(dir, "vmstate"), filepath.Join(dir, "mem")
	if err := m.CreateSnapshot(context.Background(), fcapi.SnapshotCreateParams{SnapshotPath: state, MemFilePath: mem}); err != nil {
		b.Fatal(err)
	}
	return state, mem
}

// BenchmarkAPISnapshotLoad measures PUT /snapshot/load (without
// resume_vm) on a fresh thaw-vmm process, over HTTP, as thawd issues it:
// Firecracker's File load measured on this machine takes 7-15 ms at 128
// MiB and 9-13 ms at 512 MiB. Process start and the wait for the API
// socket are not timed. For Uffd an internal/uffd page server in this
// process serves the VMM (on demand).
func BenchmarkAPISnapshotLoad(b *testing.B) {
	bin := thawVMM(b)
	for _, size := range []uint64{128, 512, 2048} {
		state, mem := benchTemplate(b, size)
		for _, backend := range []fcapi.MemBackendType{fcapi.MemBackendFile, fcapi.MemBackendUffd} {
			b.Run(fmt.Sprintf("%s/mem=%dMiB", backend, size), func(b *testing.B) {
				dir := b.TempDir()
				var l *uffd.Listener
				var src *uffd.FileSource
				if backend == fcapi.MemBackendUffd {
					testenv.RequireUFFD(b)
					var err error
					if l, err = uffd.Listen(filepath.Join(dir, "uffd.sock")); err != nil {
						b.Fatal(err)
					}
					defer l.Close()
					if src, err = uffd.OpenFile(mem); err != nil {
						b.Fatal(err)
					}
					defer src.Close()
				}
				i := 0
				for b.Loop() {
					b.StopTimer()
					i++
					sock := filepath.Join(dir, fmt.Sprintf("api%d.sock", i))
					c := fcapi.NewClient(sock)
					cmd := exec.Command(bin, "--api-sock", sock, "--level", "Off")
					if err := cmd.Start(); err != nil {
						b.Fatal(err)
					}
					waitSocket(b, sock, c)
					mb := &fcapi.MemBackend{BackendType: backend, BackendPath: mem}
					served := make(chan error, 1)
					if l != nil {
						mb.BackendPath = l.Path()
						go func() { served <- serveOne(l, src) }()
					}
					b.StartTimer()
					if err := c.LoadSnapshot(context.Background(), fcapi.SnapshotLoadParams{SnapshotPath: state, MemBackend: mb}); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					c.Close()
					cmd.Process.Kill()
					cmd.Wait()
					if l != nil {
						if err := <-served; err != nil {
							b.Fatal(err)
						}
					}
					b.StartTimer()
				}
			})
		}
	}
}

// serveOne accepts one VMM and serves it until it goes away.
func serveOne(l *uffd.Listener, src *uffd.FileSource) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	hs, err := l.Accept(ctx)
	if err != nil {
		return err
	}
	srv, err := uffd.NewServer(uffd.ServerParams{Handshake: hs, Source: src, Config: uffd.Config{DisablePrefetch: true}})
	if err != nil {
		hs.Close()
		return err
	}
	defer srv.Close()
	if stallAfter > 0 {
		stallCtx, stop := context.WithTimeout(ctx, stallAfter)
		defer stop()
		err := srv.Serve(stallCtx)
		<-ctx.Done()
		return err
	}
	return srv.Serve(ctx)
}
