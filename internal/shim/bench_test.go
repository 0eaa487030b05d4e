package shim_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/shim"
)

// The benchmarks measure what the shim adds to a create and a delete: the
// baseline starts the same fake VMM directly and waits for its API; the
// others go through shim.Start, with and without a page server and its
// handshake. Run them together (the machine is shared):
//
//	go test -run XXX -bench . -benchtime 20x ./internal/shim/

// BenchmarkVMMAlone: exec the fake VMM, wait for GET /, kill and reap it.
func BenchmarkVMMAlone(b *testing.B) {
	ctx := context.Background()
	v := newVM(b, fakeSpec{}, nil)
	for b.Loop() {
		sock := filepath.Join(v.cfg.Dir, "bench-api.sock")
		cmd := exec.Command(v.cfg.VMM, "--api-sock", sock)
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		c := fcapi.NewClient(sock)
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := c.WaitReady(rctx)
		cancel()
		c.Close()
		cmd.Process.Kill()
		cmd.Wait()
		os.Remove(sock)
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkShimStartStop: Start (shim up, VMM API ready), Stop, collect.
func BenchmarkShimStartStop(b *testing.B) {
	ctx := context.Background()
	v := newVM(b, fakeSpec{}, func(c *shim.Config) { c.Pages, c.MemFile, c.Prefetch = shim.PagesNone, "", false })
	var start, stop, finish time.Duration
	for b.Loop() {
		t0 := time.Now()
		h, err := shim.Start(ctx, shimBin, v.cfg)
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := h.Stop(ctx, time.Second); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if _, err := h.Finish(ctx); err != nil {
			b.Fatal(err)
		}
		start, stop, finish = start+t1.Sub(t0), stop+t2.Sub(t1), finish+time.Since(t2)
		h.Close()
	}
	n := float64(b.N) * float64(time.Millisecond)
	b.ReportMetric(float64(start)/n, "start-ms/op")
	b.ReportMetric(float64(stop)/n, "stop-ms/op")
	b.ReportMetric(float64(finish)/n, "collect-ms/op")
}

// BenchmarkShimStartHandshake: Start with a page server, the Uffd load,
// the verdict, then stop and collect (4 MiB memory file, prefetch on).
func BenchmarkShimStartHandshake(b *testing.B) {
	ctx := context.Background()
	v := newVM(b, fakeSpec{Handshake: hsOK, Touch: []int{0}}, nil)
	for b.Loop() {
		h, err := shim.Start(ctx, shimBin, v.cfg)
		if err != nil {
			b.Fatal(err)
		}
		if err := v.load(ctx, h); err != nil {
			b.Fatal(err)
		}
		if verdict, err := h.Handshake(ctx); err != nil || verdict.Err() != nil {
			b.Fatalf("verdict %+v, %v", verdict, err)
		}
		if _, err := h.Stop(ctx, time.Second); err != nil {
			b.Fatal(err)
		}
		if _, err := h.Finish(ctx); err != nil {
			b.Fatal(err)
		}
		h.Close()
	}
}
