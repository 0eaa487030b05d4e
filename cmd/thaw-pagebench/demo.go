package main

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/thawvm/thaw/internal/uffd"
	"github.com/thawvm/thaw/internal/uffd/uffdtest"
)

// demo serves a memory file to a separate toucher process through the
// Firecracker handshake and checks every byte.
func demo(dir string, size int64, threads int, log *slog.Logger) error {
	fmt.Println("Thaw page-server demo: no VM is started. A second process plays the VMM:")
	fmt.Println("it maps guest memory, registers it with userfaultfd, sends the Firecracker")
	fmt.Println("handshake, and touches every page from several threads while the page server")
	fmt.Println("answers faults and prefetches in the background. Every byte is checked.")
	fmt.Println()
	mem := filepath.Join(dir, "memory")
	t0 := time.Now()
	if err := uffdtest.WriteMemoryFile(mem, size, 42); err != nil {
		return err
	}
	fmt.Printf("memory file   %s, %d MiB, written in %v\n", mem, size>>20, time.Since(t0).Round(time.Millisecond))
	src, err := uffd.OpenFile(mem)
	if err != nil {
		return err
	}
	defer src.Close()
	// Two regions with a hole between them, as an x86 guest over 3 GiB has.
	half := uint64(size/2) &^ (2<<20 - 1)
	spec := uffdtest.Spec{MemFile: mem, Threads: threads, Pattern: uffdtest.Random, Writes: true, Latencies: true, Seed: 1,
		Regions: []uffdtest.Layout{{Offset: 0, Size: half}, {Offset: half, Size: uint64(size) - half}}}
	t1 := time.Now()
	s, err := startSession(dir, spec, src, uffd.Config{}, nil, log)
	if err != nil {
		return err
	}
	hsTime := time.Since(t1)
	res, st, err := s.wait(2 * time.Minute)
	if err != nil {
		return err
	}
	fmt.Printf("handshake     %d regions from pid %d, accepted in %v\n", len(spec.Regions), res.PID, hsTime.Round(time.Microsecond))
	fmt.Printf("toucher       %d threads touched %d pages (%d MiB verified, 0 mismatches) in %v\n",
		threads, res.Touches, res.Verified>>20, res.Elapsed.Round(time.Millisecond))
	fmt.Printf("touch latency p50 %v  p99 %v  max %v (as the toucher saw it)\n", res.P50, res.P99, res.Max)
	fmt.Printf("page server   %d faults (%d pages installed on demand, %d already present: woken), %d pages prefetched in %d runs (done after %v); %d all-zero pages mapped as the zero page\n",
		st.Faults, st.FaultPages, st.EEXIST, st.PrefetchedPages, st.PrefetchRuns, st.PrefetchTime.Round(time.Millisecond), st.ZeroPages)
	fmt.Printf("fault service p50 %v  p99 %v (server side, power-of-two buckets)\n", st.Latency.Quantile(0.5), st.Latency.Quantile(0.99))
	fmt.Println("ok: every byte the toucher read matched the memory file")
	return nil
}
