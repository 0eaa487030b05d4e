package shim_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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

// BenchmarkShimIdlePSS starts 8 shims (pages serve, handshake done, one
// shared 4 MiB memory file prefetched), lets them idle and reports the mean PSS
// and RSS of a shim process (its VMM not included), from
// /proc/<pid>/smaps_rollup. PSS shares the binary's text among the shims.
func BenchmarkShimIdlePSS(b *testing.B) {
	ctx := context.Background()
	const n = 8
	for b.Loop() {
		var hs []*shim.Handle
		var pss, anon, rss float64
		var template string // one memory file for all, as clones of one template share it
		for i := range n {
			v := newVM(b, fakeSpec{Handshake: hsOK, Touch: []int{0}}, func(c *shim.Config) {
				c.ID = fmt.Sprintf("sb-%d", i)
				if template == "" {
					template = c.MemFile
				}
				c.MemFile = template
			})
			h, err := shim.Start(ctx, shimBin, v.cfg)
			if err != nil {
				b.Fatal(err)
			}
			killOnCleanup(b, h.PID)
			hs = append(hs, h)
			if err := v.load(ctx, h); err != nil {
				b.Fatal(err)
			}
			for {
				st, err := h.Stats(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if st.PrefetchDone {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		time.Sleep(time.Second) // idle
		for _, h := range hs {
			m, err := smapsRollup(h.PID)
			if err != nil {
				b.Fatal(err)
			}
			pss, anon, rss = pss+m["Pss:"], anon+m["Pss_Anon:"], rss+m["Rss:"]
		}
		b.ReportMetric(pss/n, "pss-KiB/shim")
		b.ReportMetric(anon/n, "pss-anon-KiB/shim")
		b.ReportMetric(rss/n, "rss-KiB/shim")
		for _, h := range hs {
			if _, err := h.Stop(ctx, time.Second); err != nil {
				b.Fatal(err)
			}
			if _, err := h.Finish(ctx); err != nil {
				b.Fatal(err)
			}
			h.Close()
		}
	}
}

// smapsRollup returns a process's smaps_rollup fields, in KiB, by name
// ("Pss:", "Pss_Anon:", "Rss:", ...).
func smapsRollup(pid int) (map[string]float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return nil, err
	}
	m := make(map[string]float64)
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			if v, err := strconv.ParseFloat(f[1], 64); err == nil {
				m[f[0]] = v
			}
		}
	}
	return m, nil
}
