package shim_test

import (
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/shim"
	"github.com/thawvm/thaw/internal/uffd"
)

// TestServePrefetchRate: a shim started with --prefetch-rate hands the
// limit to its page server. At one page a second the prefetcher makes its
// first run and then has nothing due for minutes, so the guest's faults
// install every other page, all served while the prefetch is paced, and
// the stats report the limit.
func TestServePrefetchRate(t *testing.T) {
	ctx := testCtx(t)
	v := newVM(t, fakeSpec{Handshake: hsOK}, func(c *shim.Config) { c.PrefetchRate = uffd.MinPrefetchRate })
	h := v.start(ctx)
	if err := v.load(ctx, h); err != nil {
		t.Fatalf("snapshot load: %v", err)
	}
	if verdict, err := h.Handshake(ctx); err != nil || verdict.Err() != nil {
		t.Fatalf("verdict: got %+v, %v; want ok", verdict, err)
	}
	var rep fakeReport
	var err error
	eventually(t, "the guest touching every page", func() (bool, error) {
		rep, err = fakeReportOf(ctx, h.APISocket)
		return rep.Done, err
	})
	if rep.Mismatches != 0 || rep.Touched != memSize/4096 {
		t.Fatalf("guest: got %d pages touched, %d mismatches (%s); want %d, 0", rep.Touched, rep.Mismatches, rep.FirstBad, memSize/4096)
	}
	stats, err := h.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if stats.PrefetchRate != uffd.MinPrefetchRate {
		t.Errorf("stats: prefetch rate %d, want the shim's %d", stats.PrefetchRate, uffd.MinPrefetchRate)
	}
	if stats.PrefetchRuns != 1 || stats.PrefetchDone || stats.FaultPages+stats.PrefetchedPages != memSize/4096 {
		t.Errorf("stats: got %d prefetch runs (done %t), %d fault pages + %d prefetched; want 1 run, not done, and %d pages installed once",
			stats.PrefetchRuns, stats.PrefetchDone, stats.FaultPages, stats.PrefetchedPages, memSize/4096)
	}
	if _, err := h.Stop(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	v.finish(ctx, h)
}
