package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/thawvm/thaw/internal/fcapi"
)

var blkReread = regexp.MustCompile(`probe: blk reread tick=\d+ status=(\d+) sum=([0-9a-f]+)\n`)

// TestRestoreSandboxDriveThroughAPI is thawd's create through thaw-vmm's
// API: a probe template with a root drive and vsock is snapshotted, then a
// fresh process loads it with resume_vm false and a vsock_override,
// PATCH /drives/rootfs points the drive at the sandbox's own file (other
// contents), PATCH /vm resumes: the guest's drive reads checksum to the
// sandbox's file, and a host connection reaches the guest's echo port at
// the overridden socket.
func TestRestoreSandboxDriveThroughAPI(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, seed uint64) (string, string) {
		b := make([]byte, 64<<10)
		rng := rand.New(rand.NewPCG(seed, 9))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return path, fmt.Sprintf("%x", fnv(b[:4096]))
	}
	tmplDisk, tmplSum := write("template.img", 1)
	ownDisk, ownSum := write("sandbox.img", 2)

	p := startVMM(t, "--id", "template")
	c := p.client(t)
	if err := c.PutBootSource(ctx(t), fcapi.BootSource{KernelImagePath: probeELF(t), BootArgs: "probe.pages=4 probe.ticks=0 probe.spin=300 probe.blk.every=1"}); err != nil {
		t.Fatal(err)
	}
	if err := c.PutDrive(ctx(t), fcapi.Drive{DriveID: "rootfs", PathOnHost: tmplDisk, IsRootDevice: true}); err != nil {
		t.Fatal(err)
	}
	if err := c.PutVsock(ctx(t), fcapi.Vsock{GuestCID: 3, UDSPath: filepath.Join(dir, "template.sock")}); err != nil {
		t.Fatal(err)
	}
	if err := c.InstanceStart(ctx(t)); err != nil {
		t.Fatal(err)
	}
	p.waitOutput(t, "sum="+tmplSum+"\n", guestWait)
	if err := c.PatchDrive(ctx(t), fcapi.PartialDrive{DriveID: "rootfs", PathOnHost: filepath.Join(dir, "missing.img")}); err == nil || !strings.Contains(err.Error(), "missing.img") {
		t.Errorf("PATCH /drives to a missing file: got %v, want an error naming it", err)
	}
	if err := c.Pause(ctx(t)); err != nil {
		t.Fatal(err)
	}
	statePath, memPath := filepath.Join(dir, "vmstate"), filepath.Join(dir, "mem")
	if err := c.CreateSnapshot(ctx(t), fcapi.SnapshotCreateParams{SnapshotType: fcapi.SnapshotFull, SnapshotPath: statePath, MemFilePath: memPath}); err != nil {
		t.Fatal(err)
	}

	q := startVMM(t, "--id", "sandbox")
	qc := q.client(t)
	uds := filepath.Join(dir, "sandbox.sock")
	if err := qc.LoadSnapshot(ctx(t), fcapi.SnapshotLoadParams{SnapshotPath: statePath,
		MemBackend:    &fcapi.MemBackend{BackendType: fcapi.MemBackendFile, BackendPath: memPath},
		VsockOverride: &fcapi.VsockOverride{UDSPath: uds}}); err != nil {
		t.Fatal(err)
	}
	if err := qc.PatchDrive(ctx(t), fcapi.PartialDrive{DriveID: "rootfs", PathOnHost: ownDisk}); err != nil {
		t.Fatal(err)
	}
	if err := qc.Resume(ctx(t)); err != nil {
		t.Fatal(err)
	}
	q.waitOutput(t, "probe: vsock event id=0\n", guestWait)
	q.waitOutput(t, "sum="+ownSum+"\n", guestWait)
	for _, m := range blkReread.FindAllStringSubmatch(q.stdout.String(), -1) {
		if m[1] != "0" || m[2] != ownSum {
			t.Errorf("drive read in the sandbox: got %q, want status=0 sum=%s (the template's is %s)", m[0], ownSum, tmplSum)
		}
	}
	conn, r := dialGuest(t, uds, 1024)
	defer conn.Close()
	if err := echo(t, conn, r, []byte("hello sandbox\n")); err != nil {
		t.Error(err)
	}
}
