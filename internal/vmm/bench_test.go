package vmm

import (
	"bytes"
	"context"
	"fmt"
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

// lineClock records when each of two marker lines arrives.
type lineClock struct {
	mu          sync.Mutex
	buf         []byte
	start, done time.Time
	finished    chan struct{}
}

func (l *lineClock) Write(p []byte) (int, error) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	if l.start.IsZero() && bytes.Contains(l.buf, []byte("probe: exits start\n")) {
		l.start = now
	}
	if l.done.IsZero() && bytes.Contains(l.buf, []byte("probe: exits done\n")) {
		l.done = now
		close(l.finished)
	}
	return len(p), nil
}

// BenchmarkPIOExit measures one guest port write round trip: the exit out
// of KVM_RUN, dispatch on the port bus (to no device) and re-entry. The
// guest does b.N writes to port 0x80; the time between its two marker lines
// is divided by b.N.
func BenchmarkPIOExit(b *testing.B) {
	testenv.RequireKVM(b)
	kernel := probePath(b)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	clock := &lineClock{finished: make(chan struct{})}
	m := New(Config{Kernel: kernel, Cmdline: fmt.Sprintf("probe.exits=%d probe.ticks=1 probe.pages=1", b.N), MemMiB: 32, Serial: clock}, log)
	if err := m.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	select {
	case <-clock.finished:
	case <-time.After(5 * time.Minute):
		b.Fatal("guest did not finish its exits")
	}
	clock.mu.Lock()
	d := clock.done.Sub(clock.start)
	clock.mu.Unlock()
	b.ReportMetric(float64(d.Nanoseconds())/float64(b.N), "ns/exit")
}
