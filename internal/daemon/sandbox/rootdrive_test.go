package sandbox_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/daemon/sandbox"
	"github.com/thawvm/thaw/internal/daemon/sandbox/sandboxtest"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/daemon/template"
)

var blkReread = regexp.MustCompile(`probe: blk reread tick=\d+ status=(\d+) sum=([0-9a-f]+)\n`)

func fnv1a(b []byte) uint64 {
	h := uint64(0xcbf29ce484222325)
	for _, c := range b {
		h = (h ^ uint64(c)) * 0x100000001b3
	}
	return h
}

// TestCreateSwapsRootDrive registers a probe snapshot whose root drive is
// recorded by the absolute path of the builder's disk, with RootDrive set
// and a registered rootfs of other contents: the sandbox's drive reads
// checksum to its clone of the registered rootfs, not the builder's disk,
// so create pointed the drive at the clone before the guest resumed. The
// registration's recording run, which swaps the drive the same way, works.
func TestCreateSwapsRootDrive(t *testing.T) {
	e := newEnv(t, func(o *sandbox.Options) { o.RecordMax = 3 * time.Second })
	dir := t.TempDir()
	fill := func(path string, seed uint64) string {
		b := make([]byte, 1<<20)
		rng := rand.New(rand.NewPCG(seed, 3))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%x", fnv1a(b[:4096]))
	}
	builderDisk := filepath.Join(dir, "builder.img")
	builderSum := fill(builderDisk, 1)
	s := sandboxtest.ProbeSnapshotWithDrive(t, dir, builderDisk)
	rootfsSum := fill(s.Rootfs, 2)
	tpl, err := template.Register(ctxT(t), e.st, e.lay, template.RegisterRequest{Name: "withdisk", VMState: s.VMState, Memory: s.Memory,
		Rootfs: s.Rootfs, Kernel: s.Kernel, RootDrive: sandboxtest.RootDriveID, VCPUs: sandboxtest.ProbeVCPUs, MemoryMiB: sandboxtest.ProbeMemMiB,
		Ready: store.ReadyCheck{Kind: store.ReadySerial, Marker: sandboxtest.ReadyMarker}, Record: e.m.RecordFunc()})
	if err != nil {
		t.Fatal(err)
	}
	if b := tpl.BuildByID(tpl.Current); b.RootDrive != sandboxtest.RootDriveID || b.AccessLogPages <= 0 {
		t.Errorf("build: got root drive %q and %d recorded pages, want %q and some", b.RootDrive, b.AccessLogPages, sandboxtest.RootDriveID)
	}
	sb, err := e.m.Create(ctxT(t), sandbox.CreateRequest{ID: "disk", Template: "withdisk"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.m.Delete(context.Background(), sb.ID)
	deadline := time.Now().Add(30 * time.Second)
	var reads [][]string
	for len(reads) < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		reads = blkReread.FindAllStringSubmatch(serialLog(t, sb), -1)
	}
	if len(reads) < 2 {
		t.Fatalf("the sandbox printed fewer than 2 drive reads in 30s:\n%s", serialLog(t, sb))
	}
	for _, r := range reads {
		if r[1] != "0" || r[2] != rootfsSum {
			t.Errorf("sandbox drive read: got %q, want status=0 sum=%s (its clone; the builder's disk is %s)", r[0], rootfsSum, builderSum)
		}
	}
}

// TestRegisterBadRootDrive: a root drive id Firecracker would refuse is
// refused at registration, naming the field.
func TestRegisterBadRootDrive(t *testing.T) {
	e := newEnv(t, nil)
	s := probeSnapshot(t)
	_, err := template.Register(context.Background(), e.st, e.lay, template.RegisterRequest{Name: "bad", VMState: s.VMState, Memory: s.Memory,
		Rootfs: s.Rootfs, RootDrive: "root-fs", VCPUs: sandboxtest.ProbeVCPUs, MemoryMiB: sandboxtest.ProbeMemMiB})
	if err == nil || !regexp.MustCompile(`root_drive: .*root-fs`).MatchString(err.Error()) {
		t.Errorf("Register with root_drive \"root-fs\": got %v, want an error naming root_drive", err)
	}
}
