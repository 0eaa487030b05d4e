package template

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/daemon/layout"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/errdefs"
)

func writeFile(t *testing.T, p string, size int) string {
	t.Helper()
	if err := os.WriteFile(p, bytes.Repeat([]byte("x"), size), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func goodSpec(t *testing.T) BuildSpec {
	src := t.TempDir()
	return BuildSpec{Name: "web", Source: ImageSource{Kind: SourceDir, Path: src},
		Steps: []Step{{Shell: "echo hi", Workdir: "/"}}, Start: "sleep 1000", VCPUs: 1, MemoryMiB: 128, DiskMiB: 64}
}

func TestBuildSpecValidate(t *testing.T) {
	file := writeFile(t, filepath.Join(t.TempDir(), "img.tar"), 10)
	if err := goodSpec(t).Validate(); err != nil {
		t.Fatalf("a good spec: %v", err)
	}
	tests := []struct {
		name   string
		change func(*BuildSpec)
		want   string
	}{
		{"bad name", func(s *BuildSpec) { s.Name = "a/b" }, "template name"},
		{"reserved name", func(s *BuildSpec) { s.Name = "build-1" }, "reserved"},
		{"unknown source kind", func(s *BuildSpec) { s.Source.Kind = "iso" }, `source.kind "iso"`},
		{"relative source", func(s *BuildSpec) { s.Source.Path = "img" }, "want an absolute path on the host"},
		{"missing image", func(s *BuildSpec) { s.Source.Path = "/nonexistent/img" }, "no such file"},
		{"dir source is a file", func(s *BuildSpec) { s.Source.Path = file }, "a dir source is a directory"},
		{"tar source is a dir", func(s *BuildSpec) { s.Source.Kind = SourceTar }, "a tar source is a file"},
		{"ref on a dir", func(s *BuildSpec) { s.Source.Ref = "latest" }, "only oci and docker"},
		{"empty step", func(s *BuildSpec) { s.Steps = []Step{{}} }, "steps[0].run is empty"},
		{"relative workdir", func(s *BuildSpec) { s.Steps[0].Workdir = "src" }, "steps[0].workdir"},
		{"no vcpus", func(s *BuildSpec) { s.VCPUs = 0 }, "vcpus 0"},
		{"tiny memory", func(s *BuildSpec) { s.MemoryMiB = 8 }, "memory_mib 8"},
		{"tiny disk", func(s *BuildSpec) { s.DiskMiB = 1 }, "disk_mib 1"},
		{"bad ready", func(s *BuildSpec) { s.Ready.Kind = "ping" }, `kind "ping"`},
		{"empty warm-up", func(s *BuildSpec) { s.Warmup = [][]string{{"true"}, {}} }, "warmup[1] is empty"},
		{"warm-up without a program", func(s *BuildSpec) { s.Warmup = [][]string{{"", "-c"}} }, "warmup[0][0] is empty"},
		{"warm-up without an agent", func(s *BuildSpec) {
			s.Warmup, s.Ready = [][]string{{"true"}}, store.ReadyCheck{Kind: store.ReadySerial, Marker: "up"}
		}, "run through the agent"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := goodSpec(t)
			tc.change(&s)
			err := s.Validate()
			if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an invalid argument saying %q", err, tc.want)
			}
		})
	}
}

func newBuilder(t *testing.T, boot Booter) (*Builder, *store.Store, layout.Layout) {
	t.Helper()
	lay, err := layout.New(filepath.Join(t.TempDir(), "data"))
	if err != nil {
		t.Fatal(err)
	}
	if err := lay.Init(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(lay.Store(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	bin := t.TempDir()
	return &Builder{Store: st, Layout: lay, Kernel: writeFile(t, filepath.Join(bin, "vmlinux"), 100),
		Agent: writeFile(t, filepath.Join(bin, "thaw-agent"), 100), Boot: boot}, st, lay
}

// leftovers lists what a build left in the data directory's template and
// scratch areas.
func leftovers(t *testing.T, lay layout.Layout) []string {
	t.Helper()
	var got []string
	for _, d := range []string{"templates", "tmp"} {
		filepath.WalkDir(filepath.Join(lay.Root(), d), func(p string, de os.DirEntry, err error) error {
			if err == nil && p != filepath.Join(lay.Root(), d) {
				got = append(got, p)
			}
			return nil
		})
	}
	return got
}

func ext4Spec(t *testing.T) BuildSpec {
	img := writeFile(t, filepath.Join(t.TempDir(), "root.ext4"), 1<<20)
	return BuildSpec{Name: "web", Source: ImageSource{Kind: SourceExt4, Path: img}, VCPUs: 1, MemoryMiB: 64}
}

func TestBuildRefusedBeforeBooting(t *testing.T) {
	booted := false
	boot := func(context.Context, BootRequest, io.Writer) ([]store.Phase, error) { booted = true; return nil, nil }
	tests := []struct {
		name   string
		change func(*Builder, *BuildSpec)
		is     func(error) bool
		want   string
	}{
		{"unknown kernel", func(b *Builder, _ *BuildSpec) { b.Kernel = "/nonexistent/vmlinux" }, errdefs.IsUnavailable, "guest kernel"},
		{"no kernel", func(b *Builder, _ *BuildSpec) { b.Kernel = "" }, errdefs.IsUnavailable, "no guest kernel configured"},
		{"no agent", func(b *Builder, s *BuildSpec) { b.Agent, s.Source, s.DiskMiB = "", goodSpec(t).Source, 64 }, errdefs.IsUnavailable, "no agent binary"},
		{"missing agent", func(b *Builder, s *BuildSpec) {
			b.Agent, s.Source, s.DiskMiB = "/nonexistent/thaw-agent", goodSpec(t).Source, 64
		},
			errdefs.IsUnavailable, "agent binary"},
		{"no VMM", func(b *Builder, _ *BuildSpec) { b.Boot = nil }, errdefs.IsUnavailable, "need a VMM"},
		{"missing image", func(_ *Builder, s *BuildSpec) { s.Source.Path = "/nonexistent/root.ext4" }, errdefs.IsInvalidArgument, "source.path"},
		{"bad spec", func(_ *Builder, s *BuildSpec) { s.VCPUs = 99 }, errdefs.IsInvalidArgument, "vcpus 99"},
		{"warm-up without recording", func(b *Builder, s *BuildSpec) { b.Record, s.Warmup = nil, [][]string{{"true"}} },
			errdefs.IsFailedPrecondition, "uffd_prefetch is off"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, st, lay := newBuilder(t, boot)
			s := ext4Spec(t)
			tc.change(b, &s)
			_, err := b.Build(t.Context(), "build-x", s, io.Discard)
			if !tc.is(err) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error saying %q", err, tc.want)
			}
			if booted {
				t.Error("the build VM was booted")
			}
			if ts, _ := st.Templates(); len(ts) != 0 {
				t.Errorf("got templates %v, want none", ts)
			}
			if l := leftovers(t, lay); len(l) != 0 {
				t.Errorf("left behind %v", l)
			}
		})
	}
}

// TestBuildExt4NeedsNoAgent: an ext4 image is used as it is, so a thawd
// without an agent binary builds it.
func TestBuildExt4NeedsNoAgent(t *testing.T) {
	b, _, _ := newBuilder(t, func(_ context.Context, r BootRequest, _ io.Writer) ([]store.Phase, error) {
		writeFile(t, r.VMState, 10)
		writeFile(t, r.Memory, 64<<20)
		return nil, nil
	})
	b.Agent = ""
	if _, err := b.Build(t.Context(), "build-x", ext4Spec(t), io.Discard); err != nil {
		t.Errorf("got %v, want an ext4 build without an agent binary to succeed", err)
	}
}

func TestBuildBadAgentLeavesNothing(t *testing.T) {
	b, st, lay := newBuilder(t, func(context.Context, BootRequest, io.Writer) ([]store.Phase, error) {
		t.Error("booted a VM although the image build failed")
		return nil, nil
	})
	s := goodSpec(t)
	s.Source = ImageSource{Kind: SourceTar, Path: writeFile(t, filepath.Join(t.TempDir(), "bad.tar"), 700)}
	_, err := b.Build(t.Context(), "build-x", s, io.Discard)
	// The fixture's agent is not an executable: the host's fault, not
	// the request's.
	if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "building the root filesystem") || !strings.Contains(err.Error(), "agent") {
		t.Errorf("got %v, want unavailable naming the agent binary", err)
	}
	if ts, _ := st.Templates(); len(ts) != 0 {
		t.Errorf("got templates %v, want none", ts)
	}
	if l := leftovers(t, lay); len(l) != 0 {
		t.Errorf("left behind %v", l)
	}
}

func TestBuildBootFailureLeavesNothing(t *testing.T) {
	b, st, lay := newBuilder(t, func(_ context.Context, r BootRequest, _ io.Writer) ([]store.Phase, error) {
		writeFile(t, r.VMState, 10) // a half-written snapshot
		return nil, errors.New("agent never became healthy")
	})
	_, err := b.Build(t.Context(), "build-x", ext4Spec(t), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "build VM build-x: agent never became healthy") {
		t.Errorf("got %v, want the boot's error", err)
	}
	if ts, _ := st.Templates(); len(ts) != 0 {
		t.Errorf("got templates %v, want none", ts)
	}
	if l := leftovers(t, lay); len(l) != 0 {
		t.Errorf("left behind %v", l)
	}
}

// TestBuildPublishes drives the pipeline with a booter that writes a
// snapshot as a VM would: the request it gets and the published build are
// what the spec says.
func TestBuildPublishes(t *testing.T) {
	var got BootRequest
	b, st, lay := newBuilder(t, func(_ context.Context, r BootRequest, log io.Writer) ([]store.Phase, error) {
		got = r
		io.WriteString(log, "step output\n")
		writeFile(t, r.VMState, 10)
		writeFile(t, r.Memory, 64<<20)
		return []store.Phase{{Name: "boot", Duration: time.Second}, {Name: "steps", Duration: 2 * time.Second}}, nil
	})
	recorded := false
	warmup := [][]string{{"python3", "-c", "pass"}, {"nginx", "-t"}}
	b.Record = func(_ context.Context, r RecordSpec) (Recording, error) {
		recorded = r.RootDrive == RootDriveID && filepath.Base(r.Rootfs) == RootfsName && reflect.DeepEqual(r.Warmup, warmup)
		io.WriteString(r.Progress, "==> record-ready: 1s\nwarm-up output\n==> record-settle: 1s\n")
		return Recording{Pages: 7, Phases: []store.Phase{{Name: "record-ready", Duration: time.Second}, {Name: "record-settle", Duration: time.Second}}},
			os.WriteFile(r.Log, []byte("log"), 0o600)
	}
	s := ext4Spec(t)
	s.Steps = []Step{{Shell: "apt-get install -y nginx", Env: []string{"A=1"}}}
	s.Start = "nginx"
	s.Warmup = warmup
	var log bytes.Buffer
	tpl, err := b.Build(t.Context(), "build-x", s, &log)
	if err != nil {
		t.Fatal(err)
	}
	if got.Kernel != b.Kernel || got.VCPUs != 1 || got.MemoryMiB != 64 || got.Start != "nginx" || len(got.Steps) != 1 || got.Steps[0].Env[0] != "A=1" {
		t.Errorf("got boot request %+v, want the spec's machine, steps and start", got)
	}
	for _, want := range []string{"step output", "warm-up output", "==> image: ", "==> copy: ", "==> record-settle: ", "==> access log: 7 pages", "published"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("got log %q, want it to say %q", log.String(), want)
		}
	}
	if !recorded {
		t.Error("no recording run, or one without the build's root drive and warm-up")
	}
	stored, err := st.Template("web")
	if err != nil || stored.Current != tpl.Current || len(stored.Builds) != 1 || stored.Builds[0].AccessLogPages != 7 || stored.Builds[0].RootDrive != RootDriveID {
		t.Fatalf("got stored template %+v, %v, want one recorded build", stored, err)
	}
	if got := stored.Builds[0].Warmup; !reflect.DeepEqual(got, warmup) {
		t.Errorf("stored build's warm-up: got %q, want %q", got, warmup)
	}
	var names []string
	for _, p := range stored.Builds[0].Timings {
		names = append(names, p.Name)
	}
	if got, want := strings.Join(names, " "), "image boot steps copy record-ready record-settle"; got != want {
		t.Errorf("got build phases %q, want %q", got, want)
	}
	dir := lay.BuildDir("web", tpl.Current)
	for _, n := range []string{VMStateName, MemoryName, RootfsName, KernelName, AccessLogName} {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			t.Errorf("published build lacks %s: %v", n, err)
		}
	}
	if _, err := os.Stat(got.Dir); !os.IsNotExist(err) {
		t.Errorf("build VM directory %s still there (%v)", got.Dir, err)
	}
}

// TestBuildWarmupFailureLeavesNothing: a warm-up command that fails in the
// recording run fails the build with its kind and message (the template's
// error, for the user to fix), and nothing of the build is left.
func TestBuildWarmupFailureLeavesNothing(t *testing.T) {
	b, st, lay := newBuilder(t, func(_ context.Context, r BootRequest, _ io.Writer) ([]store.Phase, error) {
		writeFile(t, r.VMState, 10)
		writeFile(t, r.Memory, 64<<20)
		return nil, nil
	})
	b.Record = func(_ context.Context, r RecordSpec) (Recording, error) {
		if err := os.WriteFile(r.Log, []byte("half a log"), 0o600); err != nil {
			return Recording{}, err
		}
		return Recording{}, errdefs.FailedPrecondition("warm-up command 1/1 (%s) ended with exit code 3; its output ended with:\nno module named x", r.Warmup[0][0])
	}
	s := ext4Spec(t)
	s.Warmup = [][]string{{"python3", "-c", "import x"}}
	_, err := b.Build(t.Context(), "build-x", s, io.Discard)
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "exit code 3") || !strings.Contains(err.Error(), "no module named x") {
		t.Errorf("got %v, want failed precondition with the warm-up's exit code and output", err)
	}
	if ts, _ := st.Templates(); len(ts) != 0 {
		t.Errorf("got templates %v, want none", ts)
	}
	if l := leftovers(t, lay); len(l) != 0 {
		t.Errorf("left behind %v", l)
	}
}
