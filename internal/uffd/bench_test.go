package uffd_test

import (
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/testenv"
	"github.com/thawvm/thaw/internal/uffd"
	"github.com/thawvm/thaw/internal/uffd/uffdtest"
)

// benchPages is the memory size for b.N pages: at least 2 MiB.
func benchPages(b *testing.B) int64 { return max(int64(b.N), 512) * 4096 }

// BenchmarkFaults measures on-demand serving: a fake VMM faults every page
// once in random order; ns/fault is the toucher's wall time per page and
// p99-ns its 99th-percentile touch latency.
func BenchmarkFaults(b *testing.B) {
	testenv.RequireUFFD(b)
	for _, threads := range []int{1, 8} {
		b.Run(map[int]string{1: "threads=1", 8: "threads=8"}[threads], func(b *testing.B) {
			size := benchPages(b)
			path, src := memFile(b, size, 1)
			s := startSession(b, uffdtest.Spec{MemFile: path, Regions: oneRegion(uint64(size)), Threads: threads, Pattern: uffdtest.Random, Latencies: true},
				src, uffd.ServerParams{Config: uffd.Config{DisablePrefetch: true}})
			b.ResetTimer()
			res, _ := s.finish()
			b.ReportMetric(float64(res.Elapsed.Nanoseconds())/float64(res.Touches), "ns/fault")
			b.ReportMetric(float64(res.P99.Nanoseconds()), "p99-ns")
		})
	}
}

// BenchmarkPrefetch measures sequential prefetch while nothing faults.
func BenchmarkPrefetch(b *testing.B) {
	testenv.RequireUFFD(b)
	size := benchPages(b)
	path, src := memFile(b, size, 2)
	s := startSession(b, uffdtest.Spec{MemFile: path, Regions: oneRegion(uint64(size)), Threads: 1, Pattern: uffdtest.Disjoint, WaitStart: true},
		src, uffd.ServerParams{})
	b.ResetTimer()
	deadline := time.Now().Add(time.Minute)
	for !s.srv.Stats().PrefetchDone {
		if time.Now().After(deadline) {
			b.Fatal("prefetch not done after a minute")
		}
		time.Sleep(50 * time.Microsecond)
	}
	b.StopTimer()
	st := s.srv.Stats()
	s.proc.Go()
	s.finish()
	b.ReportMetric(float64(size)/float64(1<<30)/st.PrefetchTime.Seconds(), "GiB/s")
}
