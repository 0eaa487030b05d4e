package uffd_test

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/testenv"
	"github.com/thawvm/thaw/internal/uffd"
	"github.com/thawvm/thaw/internal/uffd/uffdtest"
)

// TestRecordThenPrefetchInOrder records a workload touching a scattered
// quarter of the memory, then restores again with that recording as the
// prefetch order: the prefetcher must install exactly the recorded pages,
// so that the workload, started once prefetch is complete, never faults.
func TestRecordThenPrefetchInOrder(t *testing.T) {
	testenv.RequireUFFD(t)
	noLeaks(t)
	const size = 8 << 20
	path, src := memFile(t, size, 12)
	dir := t.TempDir()
	// The workload: a random quarter of the pages, in random order.
	rng := rand.New(rand.NewPCG(1, 2))
	var ws []uint64
	for _, p := range rng.Perm(size / 4096)[:size/4096/4] {
		ws = append(ws, uint64(p)*4096)
	}
	workload := filepath.Join(dir, "workload")
	writeLog(t, workload, src, ws)

	// Recording run: prefetch off, one thread so install order is the
	// workload's order.
	recPath := filepath.Join(dir, "recorded")
	rec, err := uffd.CreateRecorder(recPath, src, 4096)
	if err != nil {
		t.Fatal(err)
	}
	s := startSession(t, uffdtest.Spec{MemFile: path, Regions: []uffdtest.Layout{{Offset: 0, Size: 5 << 20}, {Offset: 5 << 20, Size: 3 << 20}}, Threads: 1, Pattern: uffdtest.List, List: workload},
		src, uffd.ServerParams{Config: uffd.Config{DisablePrefetch: true}, Recorder: rec})
	s.finish()
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(recPath)
	if err != nil {
		t.Fatal(err)
	}
	got, err := uffd.ReadAccessLog(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Offsets, ws) {
		t.Fatalf("recorded %d offsets, want the workload's %d in the same order", len(got.Offsets), len(ws))
	}

	// Replay: prefetch in recorded order, then run the workload.
	order := uffd.LoadAccessLog(recPath, src, nil)
	if order == nil {
		t.Fatal("recorded log not loaded")
	}
	s2 := startSession(t, uffdtest.Spec{MemFile: path, Regions: []uffdtest.Layout{{Offset: 0, Size: 5 << 20}, {Offset: 5 << 20, Size: 3 << 20}}, Threads: 4, Pattern: uffdtest.List, List: workload, WaitStart: true},
		src, uffd.ServerParams{Order: order})
	deadline := time.Now().Add(10 * time.Second)
	for !s2.srv.Stats().PrefetchDone {
		if time.Now().After(deadline) {
			t.Fatal("prefetch not done after 10s")
		}
		time.Sleep(time.Millisecond)
	}
	if err := s2.proc.Go(); err != nil {
		t.Fatal(err)
	}
	res, st := s2.finish()
	if res.Touches != uint64(len(ws)) {
		t.Errorf("workload touched %d pages, want %d", res.Touches, len(ws))
	}
	if st.PrefetchedPages != uint64(len(ws)) || st.FaultPages != 0 {
		t.Errorf("prefetched %d pages and faulted %d, want exactly the %d recorded and no faults", st.PrefetchedPages, st.FaultPages, len(ws))
	}
}

// TestRecordUntilSettled runs the recording flow end to end: a workload
// touches its pages and then idles (the VMM stays up, as a template build's
// does), and the settle detector ends the recording once installs stop.
func TestRecordUntilSettled(t *testing.T) {
	testenv.RequireUFFD(t)
	noLeaks(t)
	const size = 4 << 20
	path, src := memFile(t, size, 17)
	dir := t.TempDir()
	var ws []uint64
	for p := uint64(0); p < size/4096; p += 3 {
		ws = append(ws, p*4096)
	}
	workload := filepath.Join(dir, "workload")
	writeLog(t, workload, src, ws)
	recPath := filepath.Join(dir, "recorded")
	rec, err := uffd.CreateRecorder(recPath, src, 4096)
	if err != nil {
		t.Fatal(err)
	}
	startSession(t, uffdtest.Spec{MemFile: path, Regions: oneRegion(size), Threads: 2, Pattern: uffdtest.List, List: workload, Hang: true},
		src, uffd.ServerParams{Config: uffd.Config{DisablePrefetch: true}, Recorder: rec})
	cfg := uffd.SettleConfig{Tick: 10 * time.Millisecond, Window: 3, Fraction: 0.05, Quiet: 20, MinTime: 100 * time.Millisecond, MaxTime: 20 * time.Second}
	reason, err := uffd.WaitSettled(t.Context(), cfg, func() uint64 { return uint64(rec.Count()) })
	if err != nil || reason != uffd.SettleConverged {
		t.Fatalf("WaitSettled: got %q, %v; want %q", reason, err, uffd.SettleConverged)
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	order := uffd.LoadAccessLog(recPath, src, nil)
	if order == nil || len(order.Offsets) != len(ws) {
		t.Fatalf("recorded %v, want the workload's %d pages", order, len(ws))
	}
}
