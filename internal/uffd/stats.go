package uffd

import (
	"fmt"
	"math/bits"
	"sync/atomic"
	"time"
)

// Stats is a snapshot of a Server's counters. Every field counts from the
// start of Serve.
type Stats struct {
	// Faults is the number of page-fault messages handled, including those
	// answered by a wake because the page was already present.
	Faults uint64
	// FaultPages and FaultBytes count pages installed to answer faults.
	FaultPages uint64
	FaultBytes uint64
	// ZeroPages counts pages whose file contents are all zero and that were
	// installed as the shared zero page (UFFDIO_ZEROPAGE) instead of a copy,
	// by faults or the prefetcher: they cost the VM no memory until written.
	ZeroPages uint64
	// EEXIST counts copies that found the page already installed (another
	// copy won the race); each was answered with UFFDIO_WAKE.
	EEXIST uint64
	// EAGAIN counts faults deferred because the address space was changing
	// (a REMOVE event pending); each was retried after draining events.
	EAGAIN uint64
	// RemoveEvents counts UFFD_EVENT_REMOVE messages; RemovedBytes the
	// registered memory they covered (unregistered in response).
	RemoveEvents uint64
	RemovedBytes uint64
	// PrefetchedPages, PrefetchBytes and PrefetchRuns count pages installed
	// by the prefetcher and the multi-page copies that installed them.
	PrefetchedPages uint64
	PrefetchBytes   uint64
	PrefetchRuns    uint64
	// PrefetchDone reports whether the prefetcher has run out of pages;
	// PrefetchTime is how long after Serve started that happened.
	PrefetchDone bool
	PrefetchTime time.Duration
	// PrefetchRate is the prefetcher's limit in bytes per second
	// (Config.PrefetchRate; 0: unlimited); PrefetchWait is the time Serve
	// spent sleeping because the next run was not yet due (faults that
	// arrived meanwhile were served at once and are not part of it), in
	// PrefetchWaits sleeps (each ended by the run falling due, a fault,
	// or the VMM, ctx or Close).
	PrefetchRate  uint64
	PrefetchWait  time.Duration
	PrefetchWaits uint64
	// Latency is the distribution of fault service times: from the read(2)
	// that returned the fault to the end of the copy or wake that answered
	// it. Time a fault spent queued before that read is not included.
	Latency Histogram
}

func (s Stats) String() string {
	return fmt.Sprintf("faults=%d fault_pages=%d fault_bytes=%d zero_pages=%d eexist=%d eagain=%d removes=%d removed_bytes=%d prefetched_pages=%d prefetch_runs=%d prefetch_done=%t prefetch_rate=%d prefetch_wait=%v prefetch_waits=%d latency_p50=%v latency_p99=%v",
		s.Faults, s.FaultPages, s.FaultBytes, s.ZeroPages, s.EEXIST, s.EAGAIN, s.RemoveEvents, s.RemovedBytes,
		s.PrefetchedPages, s.PrefetchRuns, s.PrefetchDone, s.PrefetchRate, s.PrefetchWait, s.PrefetchWaits, s.Latency.Quantile(0.5), s.Latency.Quantile(0.99))
}

// HistogramBuckets is the number of latency buckets. Bucket 0 holds
// latencies under 256 ns; bucket k > 0 holds [256·2^(k-1), 256·2^k) ns; the
// last bucket also holds everything longer.
const HistogramBuckets = 32

// Histogram counts latencies in power-of-two buckets (see HistogramBuckets).
type Histogram struct {
	Buckets [HistogramBuckets]uint64
}

func bucketOf(d time.Duration) int {
	if d < 0 {
		d = 0
	}
	b := bits.Len64(uint64(d) >> 8)
	if b >= HistogramBuckets {
		b = HistogramBuckets - 1
	}
	return b
}

// BucketUpper returns the exclusive upper bound of bucket k.
func BucketUpper(k int) time.Duration { return time.Duration(256) << k }

// Count returns the number of observations.
func (h *Histogram) Count() uint64 {
	var n uint64
	for _, c := range h.Buckets {
		n += c
	}
	return n
}

// Quantile returns the upper bound of the bucket holding the q-quantile
// (0 < q ≤ 1), or 0 for an empty histogram. It is exact to a factor of two.
func (h *Histogram) Quantile(q float64) time.Duration {
	n := h.Count()
	if n == 0 {
		return 0
	}
	rank := uint64(q * float64(n))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for k, c := range h.Buckets {
		seen += c
		if seen >= rank {
			return BucketUpper(k)
		}
	}
	return BucketUpper(HistogramBuckets - 1)
}

// counters are the live, atomically updated counterparts of Stats, written
// by the serve loop and read by Stats from any goroutine.
type counters struct {
	faults, faultPages, faultBytes, eexist, eagain atomic.Uint64
	zeroPages                                      atomic.Uint64
	removes, removedBytes                          atomic.Uint64
	prefPages, prefBytes, prefRuns, prefWaits      atomic.Uint64
	prefDone                                       atomic.Bool
	prefTime, prefWait                             atomic.Int64
	prefRate                                       uint64 // set before Serve, never changed
	latency                                        [HistogramBuckets]atomic.Uint64
}

func (c *counters) snapshot() Stats {
	s := Stats{
		Faults: c.faults.Load(), FaultPages: c.faultPages.Load(), FaultBytes: c.faultBytes.Load(),
		ZeroPages: c.zeroPages.Load(), EEXIST: c.eexist.Load(), EAGAIN: c.eagain.Load(),
		RemoveEvents: c.removes.Load(), RemovedBytes: c.removedBytes.Load(),
		PrefetchedPages: c.prefPages.Load(), PrefetchBytes: c.prefBytes.Load(), PrefetchRuns: c.prefRuns.Load(),
		PrefetchDone: c.prefDone.Load(), PrefetchTime: time.Duration(c.prefTime.Load()),
		PrefetchRate: c.prefRate, PrefetchWait: time.Duration(c.prefWait.Load()),
		PrefetchWaits: c.prefWaits.Load(),
	}
	for k := range c.latency {
		s.Latency.Buckets[k] = c.latency[k].Load()
	}
	return s
}
