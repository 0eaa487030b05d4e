package sandbox_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/daemon/config"
	"github.com/thawvm/thaw/internal/daemon/layout"
	"github.com/thawvm/thaw/internal/daemon/live"
	"github.com/thawvm/thaw/internal/daemon/sandbox"
	"github.com/thawvm/thaw/internal/daemon/sandbox/sandboxtest"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/daemon/template"
	"github.com/thawvm/thaw/internal/shim"
)

// TestBootSnapshotBadKernel boots a build VM under the real shim and
// thaw-vmm with a kernel that is not one: the VMM refuses it, BootSnapshot
// says which call failed, and no shim, VMM or socket is left.
func TestBootSnapshotBadKernel(t *testing.T) {
	bins := sandboxtest.Binaries(t)
	lay, err := layout.New(filepath.Join(t.TempDir(), "d"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(lay.Root(), 0o700); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(lay.Store(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := lay.Init(); err != nil {
		t.Fatal(err)
	}
	settings, err := live.New(config.Default())
	if err != nil {
		t.Fatal(err)
	}
	m, err := sandbox.New(sandbox.Options{Store: st, Layout: lay, Settings: settings, Shim: filepath.Join(bins, "thaw-shim"),
		VMM: shim.BuiltinVMM, StopGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := lay.ScratchDir("build-test-")
	if err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(dir, "not-a-kernel")
	rootfs := filepath.Join(dir, template.RootfsName)
	for _, p := range []string{kernel, rootfs} {
		if err := os.WriteFile(p, bytes.Repeat([]byte("junk"), 4096), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var log bytes.Buffer
	phases, err := m.BootSnapshot(ctx, template.BootRequest{ID: "build-test", Dir: dir, Rootfs: rootfs, Kernel: kernel,
		VMState: filepath.Join(dir, "vmstate"), Memory: filepath.Join(dir, "memory"), VCPUs: 1, MemoryMiB: 64}, &log)
	if err == nil {
		t.Fatal("BootSnapshot with a junk kernel succeeded")
	}
	if phases != nil {
		t.Errorf("got phases %v from a failed boot, want none", phases)
	}
	if !strings.Contains(err.Error(), "PUT /boot-source") && !strings.Contains(err.Error(), "InstanceStart") {
		t.Errorf("got %v, want it to name the refused call", err)
	}
	t.Logf("error: %v", err)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Type()&os.ModeSocket != 0 {
			t.Errorf("socket %s left in the build directory", e.Name())
		}
	}
	if procs := processesMentioning(dir); len(procs) > 0 {
		t.Errorf("processes left running: %q", procs)
	}
	for _, n := range []string{"vmstate", "memory"} {
		if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
			t.Errorf("%s written although the boot failed", n)
		}
	}
}

// processesMentioning lists the command lines of live processes that name
// s (a VM directory: the shim and VMM get it in their arguments).
func processesMentioning(s string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(cmd, []byte(s)) {
			out = append(out, string(bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})))
		}
	}
	return out
}
