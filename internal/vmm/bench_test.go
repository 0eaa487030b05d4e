package vmm

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/testenv"
)

// firstByte signals on its channel when the first byte arrives.
type firstByte struct {
	once sync.Once
	ch   chan struct{}
}

func (f *firstByte) Write(p []byte) (int, error) {
	f.once.Do(func() { close(f.ch) })
	return len(p), nil
}

// BenchmarkStartToFirstOutput measures InstanceStart (Machine.Start: KVM
// VM, memory, kernel load, vCPUs) until the probe guest's first serial
// line, what Firecracker's figure "InstanceStart → first guest output"
// measures. Memory is 128 MiB, Firecracker's default.
func BenchmarkStartToFirstOutput(b *testing.B) {
	testenv.RequireKVM(b)
	kernel := probePath(b)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for b.Loop() {
		out := &firstByte{ch: make(chan struct{})}
		m := New(Config{Kernel: kernel, Cmdline: "probe.pages=1 probe.ticks=0 probe.spin=100000", MemMiB: 128, Serial: out}, log)
		if err := m.Start(context.Background()); err != nil {
			b.Fatal(err)
		}
		select {
		case <-out.ch:
		case <-time.After(30 * time.Second):
			b.Fatal("no guest output within 30s")
		}
		b.StopTimer()
		if err := m.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkPauseResume measures a Pause (kick every vCPU out of KVM_RUN
// and park it) plus a Resume, with 2 vCPUs running the probe's busy loop.
func BenchmarkPauseResume(b *testing.B) {
	testenv.RequireKVM(b)
	kernel := probePath(b)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	out := &firstByte{ch: make(chan struct{})}
	m := New(Config{Kernel: kernel, Cmdline: "probe.pages=1 probe.ticks=0 probe.spin=100000", VCPUs: 2, MemMiB: 32, Serial: out}, log)
	if err := m.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	<-out.ch
	for b.Loop() {
		if err := m.Pause(); err != nil {
			b.Fatal(err)
		}
		if err := m.Resume(); err != nil {
			b.Fatal(err)
		}
	}
}
