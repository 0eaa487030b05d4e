package vmm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/testenv"
	"github.com/thawvm/thaw/internal/vmm/virtio"
	"github.com/thawvm/thaw/internal/vmm/vmstate"
)

// fnv1a is the probe's block checksum (FNV-1a, 64-bit).
func fnv1a(b []byte) uint64 {
	h := uint64(0xcbf29ce484222325)
	for _, c := range b {
		h = (h ^ uint64(c)) * 0x100000001b3
	}
	return h
}

// vsockDial opens a host-initiated connection to the probe's echo port
// (1024) through Firecracker's CONNECT protocol.
func vsockDial(t *testing.T, uds string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("unix", uds)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "CONNECT 1024\n")
	conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "OK ") {
		t.Fatalf("CONNECT 1024 on %s: got %q, %v, want \"OK <port>\\n\"", uds, line, err)
	}
	return conn, r
}

// vsockEcho sends msg and checks the probe echoes it.
func vsockEcho(t *testing.T, conn net.Conn, r *bufio.Reader, msg string) {
	t.Helper()
	if _, err := conn.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.ReadFull(r, got); err != nil || string(got) != msg {
		t.Fatalf("echo: got %q, %v, want %q", got, err, msg)
	}
}

var rereadRE = regexp.MustCompile(`probe: blk reread tick=(\d+) status=(\d+) sum=([0-9a-f]+)\n`)

// TestSnapshotVirtioDevices snapshots a probe that has used its root drive
// and its vsock device, and restores it with the File and Uffd backends
// (Uffd with vsock_override): after restore the probe's periodic drive
// reads, through the queue it set up at boot, still checksum to the
// disk's contents; the guest got the vsock transport reset, the
// connection open at snapshot time is closed on the host, and a new
// host-initiated connection reaches the guest's surviving listener.
func TestSnapshotVirtioDevices(t *testing.T) {
	testenv.RequireUFFD(t)
	testenv.RequireKVM(t)
	dir := t.TempDir()
	disk := make([]byte, 256<<10)
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range disk {
		disk[i] = byte(rng.Uint32())
	}
	diskPath := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(diskPath, disk, 0o644); err != nil {
		t.Fatal(err)
	}
	wantSum := fmt.Sprintf("%x", fnv1a(disk[:8*512]))
	uds := filepath.Join(dir, "v.sock")

	out := &testenv.Buffer{}
	src := New(Config{
		Kernel: probePath(t), Cmdline: "probe.pages=16 probe.ticks=0 probe.spin=300 probe.blk.every=2",
		VCPUs: 1, MemMiB: 32, Serial: out,
		Drives: []DriveConfig{{ID: "rootfs", Path: diskPath, Root: true, ReadOnly: true}},
		Vsock:  &VsockConfig{GuestCID: 3, UDSPath: uds},
	}, testLogger(t))
	t.Cleanup(func() { src.Close() })
	if err := src.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, out, "probe: blk reread tick=2 status=0 sum="+wantSum+"\n", 60*time.Second)
	old, oldR := vsockDial(t, uds)
	vsockEcho(t, old, oldR, "before the snapshot\n")

	if err := src.Pause(); err != nil {
		t.Fatal(err)
	}
	statePath, memPath := filepath.Join(dir, "vmstate"), filepath.Join(dir, "mem")
	if err := src.CreateSnapshot(context.Background(), fcapi.SnapshotCreateParams{SnapshotPath: statePath, MemFilePath: memPath}); err != nil {
		t.Fatal(err)
	}
	checkRingsMatchMemory(t, statePath, memPath)
	// The snapshot closed the live connection, as Firecracker's does.
	old.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := oldR.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("pre-snapshot connection after the snapshot: got %d bytes, %v, want EOF", n, err)
	}
	tick, _ := lastTick(t, out.String())
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(uds); !os.IsNotExist(err) {
		t.Fatalf("vsock socket after Close: %v, want it removed", err)
	}

	for _, tc := range []struct {
		backend  fcapi.MemBackend
		override string
	}{
		{fcapi.MemBackend{BackendType: fcapi.MemBackendFile, BackendPath: memPath}, ""},
		{fcapi.MemBackend{BackendType: fcapi.MemBackendUffd, BackendPath: servePages(t, memPath)}, filepath.Join(dir, "override.sock")},
	} {
		t.Run(string(tc.backend.BackendType), func(t *testing.T) {
			p := fcapi.SnapshotLoadParams{SnapshotPath: statePath, MemBackend: &tc.backend}
			sock := uds
			if tc.override != "" {
				p.VsockOverride = &fcapi.VsockOverride{UDSPath: tc.override}
				sock = tc.override
			}
			m, out2 := loadProbe(t, p)
			cfg := m.Config()
			if len(cfg.Drives) != 1 || cfg.Drives[0].Path != diskPath || !cfg.Drives[0].Root || cfg.Vsock == nil || cfg.Vsock.UDSPath != sock || cfg.Vsock.GuestCID != 3 {
				t.Errorf("config after load: got drives %+v, vsock %+v; want the snapshot's drive and vsock at %s", cfg.Drives, cfg.Vsock, sock)
			}
			waitFor(t, out2, "probe: vsock event id=0\n", 60*time.Second)
			waitFor(t, out2, fmt.Sprintf("probe: tick %d ", tick+4), 60*time.Second)
			rereads := rereadRE.FindAllStringSubmatch(out2.String(), -1)
			if len(rereads) == 0 {
				t.Fatalf("no drive reads after restore:\n%s", out2.String())
			}
			for _, r := range rereads {
				if r[2] != "0" || r[3] != wantSum {
					t.Errorf("drive read after restore: got %q, want status=0 sum=%s", r[0], wantSum)
				}
			}
			if strings.Contains(out2.String(), "probe: boot") {
				t.Errorf("restored guest booted again:\n%s", out2.String())
			}
			conn, r := vsockDial(t, sock)
			vsockEcho(t, conn, r, "after the restore, over "+string(tc.backend.BackendType)+"\n")
		})
	}
}

// checkRingsMatchMemory checks that a snapshot's virtio queues and its
// memory file describe the same moment: each ready queue's used index in
// the memory file is the one the vmstate says the device last published.
// A device left running while the memory is written (vsock sends its
// TRANSPORT_RESET event as soon as it resumes) puts the file ahead of the
// vmstate, and a clone then completes the same descriptors again.
func checkRingsMatchMemory(t *testing.T, statePath, memPath string) {
	t.Helper()
	st, err := vmstate.ReadFile(statePath, 0)
	if err != nil {
		t.Fatal(err)
	}
	mem, err := os.ReadFile(memPath)
	if err != nil {
		t.Fatal(err)
	}
	// usedIdx reads struct virtq_used's idx (after its 16-bit flags).
	usedIdx := func(gpa uint64) (uint16, bool) {
		for _, r := range st.Memory {
			if gpa >= r.GuestPhysAddr && gpa+4 <= r.GuestPhysAddr+r.Size {
				off := r.FileOffset + gpa - r.GuestPhysAddr + 2
				return uint16(mem[off]) | uint16(mem[off+1])<<8, true
			}
		}
		return 0, false
	}
	checked := 0
	for _, d := range st.Devices {
		if !isVirtio(d.Kind) {
			continue
		}
		var ts virtio.State
		if err := json.Unmarshal(d.Transport, &ts); err != nil {
			t.Fatal(err)
		}
		for i, q := range ts.Queues {
			if !q.Ready {
				continue
			}
			got, ok := usedIdx(q.DeviceAddr)
			if !ok {
				t.Errorf("%s queue %d: used ring at %#x is outside guest memory", d.Kind, i, q.DeviceAddr)
				continue
			}
			if got != q.NextUsed {
				t.Errorf("%s queue %d: used index in the memory file %d, in the vmstate %d: the device ran while the snapshot was written", d.Kind, i, got, q.NextUsed)
			}
			checked++
		}
	}
	if checked == 0 {
		t.Fatal("the snapshot has no ready virtio queue to check")
	}
}

// TestRestoreWithSwappedDrive restores a probe that reads its drive with
// the drive switched (PATCH /drives) to a sandbox's own file before the
// resume: the guest's reads after restore checksum to the new file's
// contents, not the template's; a file smaller than the capacity the
// guest knows, or an unknown drive, is refused.
func TestRestoreWithSwappedDrive(t *testing.T) {
	testenv.RequireKVM(t)
	dir := t.TempDir()
	write := func(name string, seed uint64, size int) ([]byte, string) {
		b := make([]byte, size)
		rng := rand.New(rand.NewPCG(seed, 1))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return b, path
	}
	tmpl, tmplPath := write("template.img", 1, 64<<10)
	own, ownPath := write("sandbox.img", 2, 64<<10)
	_, smallPath := write("small.img", 3, 32<<10)
	tmplSum, ownSum := fmt.Sprintf("%x", fnv1a(tmpl[:4096])), fmt.Sprintf("%x", fnv1a(own[:4096]))

	out := &testenv.Buffer{}
	src := New(Config{
		Kernel: probePath(t), Cmdline: "probe.pages=4 probe.ticks=0 probe.spin=300 probe.blk.every=1",
		VCPUs: 1, MemMiB: 32, Serial: out,
		Drives: []DriveConfig{{ID: "rootfs", Path: tmplPath, Root: true}},
	}, testLogger(t))
	t.Cleanup(func() { src.Close() })
	if err := src.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, out, "probe: blk reread tick=2 status=0 sum="+tmplSum+"\n", 60*time.Second)
	if err := src.UpdateDrive(fcapi.PartialDrive{DriveID: "rootfs", PathOnHost: smallPath}); err == nil || !strings.Contains(err.Error(), "does not resize drives") {
		t.Errorf("UpdateDrive to a smaller file: got %v, want an error about the capacity", err)
	}
	if err := src.Pause(); err != nil {
		t.Fatal(err)
	}
	statePath, memPath := filepath.Join(dir, "vmstate"), filepath.Join(dir, "mem")
	if err := src.CreateSnapshot(context.Background(), fcapi.SnapshotCreateParams{SnapshotPath: statePath, MemFilePath: memPath}); err != nil {
		t.Fatal(err)
	}
	src.Close()

	m := New(Config{Serial: &testenv.Buffer{}}, testLogger(t))
	t.Cleanup(func() { m.Close() })
	if err := m.UpdateDrive(fcapi.PartialDrive{DriveID: "rootfs", PathOnHost: ownPath}); !errors.Is(err, ErrState) {
		t.Errorf("UpdateDrive before load: got %v, want ErrState", err)
	}
	out2 := &testenv.Buffer{}
	m = New(Config{Serial: out2}, testLogger(t))
	t.Cleanup(func() { m.Close() })
	if err := m.LoadSnapshot(context.Background(), fcapi.SnapshotLoadParams{SnapshotPath: statePath, MemBackend: &fcapi.MemBackend{BackendType: fcapi.MemBackendFile, BackendPath: memPath}}); err != nil {
		t.Fatal(err)
	}
	if err := m.UpdateDrive(fcapi.PartialDrive{DriveID: "data", PathOnHost: ownPath}); err == nil || !strings.Contains(err.Error(), "no such drive") {
		t.Errorf("UpdateDrive of an unknown drive: got %v, want an error saying there is none", err)
	}
	if err := m.UpdateDrive(fcapi.PartialDrive{DriveID: "rootfs", PathOnHost: ownPath}); err != nil {
		t.Fatal(err)
	}
	if got := m.Config().Drives[0].Path; got != ownPath {
		t.Errorf("drive path in the config after UpdateDrive: got %q, want %q", got, ownPath)
	}
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	tick, _ := lastTick(t, out.String())
	waitFor(t, out2, fmt.Sprintf("probe: tick %d ", tick+3), 60*time.Second)
	rereads := rereadRE.FindAllStringSubmatch(out2.String(), -1)
	if len(rereads) == 0 {
		t.Fatalf("no drive reads after restore:\n%s", out2.String())
	}
	for _, r := range rereads {
		if r[2] != "0" || r[3] != ownSum {
			t.Errorf("drive read after restore: got %q, want status=0 sum=%s (the sandbox's file; the template's is %s)", r[0], ownSum, tmplSum)
		}
	}
}

// TestSnapshotVsockOverrideWithoutVsock: vsock_override for a snapshot
// with no vsock device is refused, naming the field.
func TestSnapshotVsockOverrideWithoutVsock(t *testing.T) {
	src, _ := startProbe(t, "probe.pages=1 probe.ticks=0 probe.spin=1000", 1, 32)
	if err := src.Pause(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	statePath, memPath := filepath.Join(dir, "vmstate"), filepath.Join(dir, "mem")
	if err := src.CreateSnapshot(context.Background(), fcapi.SnapshotCreateParams{SnapshotPath: statePath, MemFilePath: memPath}); err != nil {
		t.Fatal(err)
	}
	m := New(Config{}, testLogger(t))
	defer m.Close()
	err := m.LoadSnapshot(context.Background(), fcapi.SnapshotLoadParams{
		SnapshotPath: statePath, MemBackend: &fcapi.MemBackend{BackendType: fcapi.MemBackendFile, BackendPath: memPath},
		VsockOverride: &fcapi.VsockOverride{UDSPath: filepath.Join(dir, "v.sock")},
	})
	if err == nil || !strings.Contains(err.Error(), "vsock_override") {
		t.Errorf("LoadSnapshot with vsock_override and no vsock: got %v, want an error naming vsock_override", err)
	}
	if got := m.State(); got != NotStarted {
		t.Errorf("state after the failed load: got %s, want %s", got, NotStarted)
	}
}

// TestRestoreVirtioLayoutErrors: a vmstate whose virtio device sits outside
// thaw-vmm's windows or on the wrong GSI is refused, naming the device.
// The checks come before any KVM object is needed.
func TestRestoreVirtioLayoutErrors(t *testing.T) {
	tests := []struct {
		name string
		dev  vmstate.Device
		want string
	}{
		{"below the base", vmstate.Device{Kind: devVirtioVsock, ID: "vsock", MMIOBase: VirtioMMIOBase - VirtioWindowSize, GSI: 5}, "outside thaw-vmm's virtio windows"},
		{"far above", vmstate.Device{Kind: devVirtioVsock, ID: "vsock", MMIOBase: 0xfffffffffffff000, GSI: 5}, "outside thaw-vmm's virtio windows"},
		{"unaligned", vmstate.Device{Kind: devVirtioVsock, ID: "vsock", MMIOBase: VirtioMMIOBase + 8, GSI: 5}, "outside thaw-vmm's virtio windows"},
		{"wrong gsi", vmstate.Device{Kind: devVirtioBlk, ID: "rootfs", MMIOBase: VirtioMMIOBase + VirtioWindowSize, GSI: 5}, "uses GSI 5, want 6"},
	}
	for _, tt := range tests {
		m := New(Config{}, testLogger(t))
		hw := &hardware{}
		_, err := m.restoreVirtio(hw, []vmstate.Device{tt.dev}, nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.dev.ID) {
			t.Errorf("%s: got %v, want an error naming %q and containing %q", tt.name, err, tt.dev.ID, tt.want)
		}
	}
}
