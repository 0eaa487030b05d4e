package layout

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/thawvm/thaw/internal/daemon/disk/disktest"
	"github.com/thawvm/thaw/internal/errdefs"
)

func newLayout(t *testing.T) Layout {
	t.Helper()
	l, err := New(filepath.Join(t.TempDir(), "data"))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Init(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Invariant: whatever a test did, nothing is left in tmp.
		for _, name := range ls(t, l.tmp()) {
			t.Errorf("leftover in tmp: %s", name)
		}
	})
	return l
}

func ls(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestNewRefusesRelative(t *testing.T) {
	if _, err := New("data"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("New(relative): got %v, want invalid argument", err)
	}
}

func TestInit(t *testing.T) {
	l := newLayout(t)
	for _, d := range []string{l.Root(), filepath.Join(l.Root(), "templates"), filepath.Join(l.Root(), "sandboxes"), l.tmp()} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %v, want 0700", d, fi.Mode().Perm())
		}
	}
	// Residue of a crash in tmp goes at the next Init; published data stays.
	if err := os.MkdirAll(filepath.Join(l.tmp(), "stage-py-b1-123", "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := l.CreateSandboxDir("sb1"); err != nil {
		t.Fatal(err)
	}
	if err := l.Init(); err != nil {
		t.Fatal(err)
	}
	if got := ls(t, l.tmp()); len(got) != 0 {
		t.Errorf("tmp after Init holds %q, want nothing", got)
	}
	if got := ls(t, filepath.Join(l.Root(), "sandboxes")); !slices.Equal(got, []string{"sb1"}) {
		t.Errorf("sandboxes after Init = %q, want [sb1]", got)
	}
}

func TestPublishBuild(t *testing.T) {
	l := newLayout(t)
	stage, err := l.StageBuild("py", "b1")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stage, "mem"), []byte("memory"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := l.PublishBuild(stage, "py", "b1"); err != nil {
		t.Fatalf("PublishBuild: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(l.BuildDir("py", "b1"), "mem")); err != nil || string(b) != "memory" {
		t.Errorf("published mem = %q, %v; want \"memory\"", b, err)
	}
	if _, err := os.Stat(stage); !os.IsNotExist(err) {
		t.Errorf("staging directory still exists after publishing: %v", err)
	}

	// A second publish of the same build is refused and changes nothing.
	stage2, err := l.StageBuild("py", "b1")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(stage2, "mem"), []byte("other"), 0o600)
	if err := l.PublishBuild(stage2, "py", "b1"); !errdefs.IsAlreadyExists(err) {
		t.Errorf("second publish: got %v, want already exists", err)
	}
	if b, _ := os.ReadFile(filepath.Join(l.BuildDir("py", "b1"), "mem")); string(b) != "memory" {
		t.Errorf("a refused publish changed the build: mem = %q", b)
	}
	os.RemoveAll(stage2)

	if err := l.PublishBuild(t.TempDir(), "py", "b2"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("publishing from outside tmp: got %v, want invalid argument", err)
	}
}

func TestRemoveBuild(t *testing.T) {
	l := newLayout(t)
	for _, b := range []string{"b1", "b2"} {
		stage, err := l.StageBuild("py", b)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.PublishBuild(stage, "py", b); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.RemoveBuild("py", "b1"); err != nil {
		t.Fatal(err)
	}
	if got := ls(t, l.TemplateDir("py")); !slices.Equal(got, []string{"b2"}) {
		t.Errorf("template dir = %q, want [b2]", got)
	}
	if err := l.RemoveBuild("py", "b2"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.TemplateDir("py")); !os.IsNotExist(err) {
		t.Errorf("template directory outlived its last build: %v", err)
	}
	if err := l.RemoveBuild("py", "b2"); err != nil {
		t.Errorf("removing a missing build: %v, want nil (teardown must be retryable)", err)
	}
}

func TestSandboxDir(t *testing.T) {
	l := newLayout(t)
	dir, err := l.CreateSandboxDir("sb1")
	if err != nil {
		t.Fatal(err)
	}
	if dir != l.SandboxDir("sb1") {
		t.Errorf("dir = %s, want %s", dir, l.SandboxDir("sb1"))
	}
	if _, err := l.CreateSandboxDir("sb1"); !errdefs.IsAlreadyExists(err) {
		t.Errorf("second create: got %v, want already exists", err)
	}
	os.WriteFile(filepath.Join(dir, "rootfs.ext4"), []byte("disk"), 0o600)
	os.Mkdir(filepath.Join(dir, "snap"), 0o700)
	if ids, err := l.SandboxDirs(); err != nil || !slices.Equal(ids, []string{"sb1"}) {
		t.Errorf("SandboxDirs = %q, %v; want [sb1]", ids, err)
	}
	if err := l.RemoveSandboxDir("sb1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("sandbox dir survived removal: %v", err)
	}
	if err := l.RemoveSandboxDir("sb1"); err != nil {
		t.Errorf("second remove: %v, want nil", err)
	}
}

func TestRefusesBadNames(t *testing.T) {
	l := newLayout(t)
	for _, id := range []string{"../escape", "build-1", "", "a/b", ".."} {
		if _, err := l.CreateSandboxDir(id); !errdefs.IsInvalidArgument(err) {
			t.Errorf("CreateSandboxDir(%q): got %v, want invalid argument", id, err)
		}
		if err := l.RemoveSandboxDir(id); !errdefs.IsInvalidArgument(err) {
			t.Errorf("RemoveSandboxDir(%q): got %v, want invalid argument", id, err)
		}
		if _, err := l.StageBuild("py", id); !errdefs.IsInvalidArgument(err) {
			t.Errorf("StageBuild(py, %q): got %v, want invalid argument", id, err)
		}
	}
	if got := ls(t, filepath.Dir(l.Root())); !slices.Equal(got, []string{"data"}) {
		t.Errorf("outside the data dir: %q, want only data", got)
	}
}

// TestFullFilesystem: on a full data filesystem, creating a sandbox
// directory or staging a build is "resource exhausted", not a bug.
func TestFullFilesystem(t *testing.T) {
	mnt := disktest.Mount(t, "tmpfs", 1)
	l, err := New(filepath.Join(mnt, "data"))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Init(); err != nil {
		t.Fatal(err)
	}
	// Fill the 1 MiB tmpfs: data first, then inodes of empty files.
	os.WriteFile(filepath.Join(mnt, "fill"), make([]byte, 2<<20), 0o600)
	for i := 0; ; i++ {
		if err := os.Mkdir(filepath.Join(mnt, fmt.Sprintf("d%d", i)), 0o700); err != nil {
			break
		}
	}
	if _, err := l.CreateSandboxDir("sb1"); !errdefs.IsResourceExhausted(err) {
		t.Errorf("CreateSandboxDir on a full filesystem: got %v, want resource exhausted", err)
	}
	if _, err := l.StageBuild("py", "b1"); !errdefs.IsResourceExhausted(err) {
		t.Errorf("StageBuild on a full filesystem: got %v, want resource exhausted", err)
	}
}
