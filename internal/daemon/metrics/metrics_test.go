package metrics

import (
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/thawvm/thaw/internal/daemon/config"
	"github.com/thawvm/thaw/internal/daemon/live"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/uffd"
)

var t0 = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)

func setup(t *testing.T) (*Metrics, *store.Store, *live.Settings) {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "thawd.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ready := store.Build{ID: "b1", State: store.BuildReady, Dir: "/d/b1", VCPUs: 1, MemoryMiB: 128, DiskMiB: 64,
		Artifacts: store.Artifacts{Memory: "mem", VMState: "vmstate", Rootfs: "rootfs"}, CreatedAt: t0}
	building := store.Build{ID: "b2", State: store.Building, Dir: "/d/b2", VCPUs: 1, MemoryMiB: 128, DiskMiB: 64, CreatedAt: t0}
	if err := st.CreateTemplate(store.Template{Name: "py", Builds: []store.Build{ready, building}, Current: "b1", CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b", "c"} {
		if err := st.CreateSandbox(store.Sandbox{ID: id, Template: "py", Build: "b1", State: store.Creating, Dir: "/d/" + id, CreatedAt: t0}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.UpdateSandbox("a", func(sb *store.Sandbox) error {
		sb.State, sb.Shim = store.Running, store.Shim{PID: 7, ControlSocket: "/s"}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.MaxConcurrentRestores = 4
	s, err := live.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return New(st, s), st, s
}

func TestStateMetrics(t *testing.T) {
	m, _, s := setup(t)
	slot, err := s.Slots().Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer slot.Release()
	want := `
# HELP thaw_restore_slots Restore slots: the limit, those in use and creates waiting for one.
# TYPE thaw_restore_slots gauge
thaw_restore_slots{kind="in_use"} 1
thaw_restore_slots{kind="limit"} 4
thaw_restore_slots{kind="waiting"} 0
# HELP thaw_sandboxes Sandboxes by state, from the store.
# TYPE thaw_sandboxes gauge
thaw_sandboxes{state="creating"} 2
thaw_sandboxes{state="failed"} 0
thaw_sandboxes{state="paused"} 0
thaw_sandboxes{state="pausing"} 0
thaw_sandboxes{state="resuming"} 0
thaw_sandboxes{state="running"} 1
thaw_sandboxes{state="stopping"} 0
# HELP thaw_template_builds Template builds by state, from the store.
# TYPE thaw_template_builds gauge
thaw_template_builds{state="building"} 1
thaw_template_builds{state="failed"} 0
thaw_template_builds{state="ready"} 1
# HELP thaw_templates Templates in the store.
# TYPE thaw_templates gauge
thaw_templates 1
# HELP thaw_uffd_enabled 1 when new sandboxes restore through the userfaultfd page server.
# TYPE thaw_uffd_enabled gauge
thaw_uffd_enabled 1
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want),
		"thaw_restore_slots", "thaw_sandboxes", "thaw_template_builds", "thaw_templates", "thaw_uffd_enabled"); err != nil {
		t.Error(err)
	}
	s.SetUFFD(false)
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(`
# HELP thaw_uffd_enabled 1 when new sandboxes restore through the userfaultfd page server.
# TYPE thaw_uffd_enabled gauge
thaw_uffd_enabled 0
`), "thaw_uffd_enabled"); err != nil {
		t.Errorf("after switching uffd off: %v", err)
	}
}

func TestObserveCreate(t *testing.T) {
	m, _, _ := setup(t)
	ok := []store.Phase{{Name: "slot", Duration: time.Millisecond}, {Name: "load", Duration: 3 * time.Millisecond}}
	m.ObserveCreate("uffd", ok, nil)
	m.ObserveCreate("uffd", ok, nil)
	m.ObserveCreate("file", ok[:1], errors.New("load timed out"))
	if got := testutil.ToFloat64(m.creates.WithLabelValues("uffd", "ok")); got != 2 {
		t.Errorf("uffd ok creates = %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.creates.WithLabelValues("file", "error")); got != 1 {
		t.Errorf("file error creates = %v, want 1", got)
	}
	if n := testutil.CollectAndCount(m.createPhase); n != 2 {
		t.Errorf("%d phase series, want 2 (slot, load)", n)
	}
	if n := testutil.CollectAndCount(m.create); n != 1 {
		t.Errorf("%d create-total series, want 1: a failed create has no total", n)
	}
}

// TestHandler serves a real scrape, which must include the Go and process
// collectors and pass the exposition linter.
func TestHandler(t *testing.T) {
	m, _, _ := setup(t)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	if rec.Code != 200 {
		t.Fatalf("status %d: %s", rec.Code, body)
	}
	for _, want := range []string{"thaw_sandboxes{state=\"running\"} 1", "go_goroutines", "process_resident_memory_bytes"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// TestPageMetrics sums the page servers' counters and converts their
// latency buckets to Prometheus' cumulative ones.
func TestPageMetrics(t *testing.T) {
	m, _, _ := setup(t)
	var a, b uffd.Stats
	a.Faults, a.FaultPages, a.ZeroPages, a.PrefetchedPages = 3, 2, 1, 70
	b.Faults, b.PrefetchedPages = 4, 5
	a.Latency.Buckets[0] = 1 // under 256 ns
	a.Latency.Buckets[3] = 2 // [1024, 2048) ns
	b.Latency.Buckets[3] = 1
	b.Latency.Buckets[uffd.HistogramBuckets-1] = 1 // longest: only in +Inf
	m.SetPageSource(func(context.Context) []uffd.Stats { return []uffd.Stats{a, b} })
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	out := rec.Body.String()
	for _, want := range []string{
		"thaw_uffd_page_servers 2",
		"thaw_uffd_faults 7",
		"thaw_uffd_fault_pages 2",
		"thaw_uffd_zero_pages 1",
		"thaw_uffd_prefetched_pages 75",
		`thaw_uffd_fault_latency_seconds_bucket{le="2.56e-07"} 1`,
		`thaw_uffd_fault_latency_seconds_bucket{le="2.048e-06"} 4`,
		`thaw_uffd_fault_latency_seconds_bucket{le="+Inf"} 5`,
		"thaw_uffd_fault_latency_seconds_count 5",
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("scrape lacks %q:\n%s", want, out)
		}
	}
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}
