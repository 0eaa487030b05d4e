package template

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thawvm/thaw/internal/daemon/layout"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/errdefs"
)

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	file := func(name string, size int64) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, size); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := RegisterRequest{Name: "probe", VMState: file("vmstate", 100), Memory: file("mem", 2<<20), Rootfs: file("rootfs", 1<<20),
		VCPUs: 1, MemoryMiB: 2, Ready: store.ReadyCheck{Kind: store.ReadySerial, Marker: "ready"}}
	if err := good.Validate(); err != nil {
		t.Fatalf("a good request: %v", err)
	}
	tests := []struct {
		name   string
		change func(*RegisterRequest)
		want   string
	}{
		{"bad name", func(r *RegisterRequest) { r.Name = "../x" }, "template name"},
		{"reserved name", func(r *RegisterRequest) { r.Name = "build-x" }, "reserved"},
		{"relative path", func(r *RegisterRequest) { r.VMState = "vmstate" }, "vmstate \"vmstate\": want an absolute path"},
		{"missing file", func(r *RegisterRequest) { r.Rootfs = filepath.Join(dir, "nope") }, "rootfs:"},
		{"directory", func(r *RegisterRequest) { r.Memory = dir }, "not a regular file"},
		{"truncated memory", func(r *RegisterRequest) { r.MemoryMiB = 4 }, "truncated or foreign memory file"},
		{"no vcpus", func(r *RegisterRequest) { r.VCPUs = 0 }, "vcpus 0"},
		{"too many vcpus", func(r *RegisterRequest) { r.VCPUs = 33 }, "vcpus 33"},
		{"serial without marker", func(r *RegisterRequest) { r.Ready.Marker = "" }, "needs a marker"},
		{"marker on two lines", func(r *RegisterRequest) { r.Ready.Marker = "a\nb" }, "needs a marker"},
		{"agent with marker", func(r *RegisterRequest) { r.Ready.Kind = store.ReadyAgent }, "only for kind"},
		{"unknown ready kind", func(r *RegisterRequest) { r.Ready.Kind = "ping" }, `kind "ping"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := good
			tc.change(&r)
			err := r.Validate()
			if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an invalid argument saying %q", err, tc.want)
			}
		})
	}
}

// TestRegister publishes two builds of one template on an ordinary
// filesystem (the files are copied when they cannot be reflinked): the
// second becomes current, both are complete on disk, and a failing
// registration leaves nothing behind.
func TestRegister(t *testing.T) {
	src := t.TempDir()
	write := func(name string, size int) string {
		p := filepath.Join(src, name)
		if err := os.WriteFile(p, []byte(strings.Repeat("x", size)), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	lay, err := layout.New(filepath.Join(t.TempDir(), "data"))
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(lay.Root(), 0o700)
	st, err := store.Open(lay.Store(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := lay.Init(); err != nil {
		t.Fatal(err)
	}
	req := RegisterRequest{Name: "t", VMState: write("vmstate", 10), Memory: write("mem", 1<<20), Rootfs: write("rootfs", 3<<19),
		Kernel: write("vmlinux", 5), VCPUs: 1, MemoryMiB: 1}
	var ids []string
	for range 2 {
		tpl, err := Register(t.Context(), st, lay, req)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, tpl.Current)
	}
	tpl, err := st.Template("t")
	if err != nil {
		t.Fatal(err)
	}
	if len(tpl.Builds) != 2 || tpl.Current != ids[1] || ids[0] == ids[1] {
		t.Fatalf("template after two registrations: got %d builds, current %q (ids %v), want 2, the second", len(tpl.Builds), tpl.Current, ids)
	}
	b := tpl.BuildByID(tpl.Current)
	if b.MemoryBytes != 1<<20 || b.RootfsBytes != 3<<19 || b.DiskMiB != 2 || b.Artifacts.Kernel != KernelName || b.Artifacts.AccessLog != "" {
		t.Errorf("build: got %+v, want 1 MiB memory, 1.5 MiB rootfs (2 MiB disk), a kernel, no access log", b)
	}
	for _, name := range []string{VMStateName, MemoryName, RootfsName, KernelName} {
		if _, err := os.Stat(filepath.Join(b.Dir, name)); err != nil {
			t.Errorf("artifact %s: %v", name, err)
		}
	}
	// A recorder that reports no phases is timed as one "record" phase.
	rec := req
	rec.Record = func(_ context.Context, r RecordSpec) (Recording, error) {
		return Recording{Pages: 3}, os.WriteFile(r.Log, []byte("log"), 0o600)
	}
	if tpl, err := Register(t.Context(), st, lay, rec); err != nil {
		t.Fatal(err)
	} else if b := tpl.BuildByID(tpl.Current); b.AccessLogPages != 3 || len(b.Timings) != 2 || b.Timings[1].Name != "record" {
		t.Errorf("build with a recording run: got %d pages, timings %+v; want 3 pages, copy then record", b.AccessLogPages, b.Timings)
	}
	// Warm-up commands need a recording run to fill.
	warm := req
	warm.Warmup = [][]string{{"true"}}
	if _, err := Register(t.Context(), st, lay, warm); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "records none") {
		t.Errorf("registering with warm-up commands and no recording run: got %v, want failed precondition", err)
	}
	bad := req
	bad.MemoryMiB = 2
	if _, err := Register(t.Context(), st, lay, bad); !errdefs.IsInvalidArgument(err) {
		t.Errorf("registering a short memory file: got %v, want invalid argument", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(lay.Root(), "tmp")); len(ents) != 0 {
		t.Errorf("left in tmp: %v", ents)
	}
	if err := st.Check(); err != nil {
		t.Error(err)
	}
}
