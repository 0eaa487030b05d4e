package vmm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/testenv"
)

// TestDevicePlacement configures a data drive, a read-only root drive and
// vsock through the API methods and checks what the guest sees: the root
// drive first (so it is /dev/vda), each device in the next 4 KiB window
// with the next GSI from 5, announced Firecracker's way.
func TestDevicePlacement(t *testing.T) {
	testenv.RequireKVM(t)
	dir := t.TempDir()
	for _, name := range []string{"root.img", "data.img"} {
		if err := os.WriteFile(filepath.Join(dir, name), make([]byte, 64<<10), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := &syncBuffer{}
	m := New(Config{Kernel: probePath(t), Cmdline: "probe.pages=1 probe.ticks=1 probe.spin=10", MemMiB: 32, Serial: out}, testLogger(t))
	t.Cleanup(func() { m.Close() })
	for _, d := range []fcapi.Drive{
		{DriveID: "data", PathOnHost: filepath.Join(dir, "data.img")},
		{DriveID: "root", PathOnHost: filepath.Join(dir, "root.img"), IsRootDevice: true, IsReadOnly: true},
	} {
		if err := m.SetDrive(d); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.SetDrive(fcapi.Drive{DriveID: "other", PathOnHost: filepath.Join(dir, "data.img"), IsRootDevice: true}); err == nil || !strings.Contains(err.Error(), "root") {
		t.Errorf("a second root drive: got %v, want an error about the root device", err)
	}
	if err := m.SetDrive(fcapi.Drive{DriveID: "missing", PathOnHost: filepath.Join(dir, "none.img")}); err == nil || !strings.Contains(err.Error(), "path_on_host") {
		t.Errorf("a missing backing file: got %v, want an error naming path_on_host", err)
	}
	if err := m.SetVsock(fcapi.Vsock{GuestCID: 3, UDSPath: filepath.Join(dir, "v.sock")}); err != nil {
		t.Fatal(err)
	}
	startAndWait(t, m)
	want := "probe.pages=1 probe.ticks=1 probe.spin=10" +
		" virtio_mmio.device=4K@0xd0000000:5 root=/dev/vda ro" +
		" virtio_mmio.device=4K@0xd0001000:6" +
		" virtio_mmio.device=4K@0xd0002000:7\""
	for _, w := range []string{want, "probe: blk capacity=128 ro=1\n", "probe: blk id status=0 id=root\n", "probe: vsock cid=3 listen=1024\n"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("no %q in the guest's output:\n%s", w, out.String())
		}
	}
}

func startAndWait(t *testing.T, m *Machine) {
	t.Helper()
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if e := wait(t, m, 60*time.Second); e.Err != nil {
		t.Fatal(e)
	}
}

// TestSnapshotRefusesVirtio checks that a machine with virtio devices is
// not snapshotted without them: the snapshot would restore a different
// machine.
func TestSnapshotRefusesVirtio(t *testing.T) {
	testenv.RequireKVM(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, make([]byte, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	m, out := startProbeWith(t, "probe.pages=1 probe.ticks=0 probe.spin=1000", func(m *Machine) {
		if err := m.SetDrive(fcapi.Drive{DriveID: "disk", PathOnHost: disk}); err != nil {
			t.Fatal(err)
		}
	})
	waitFor(t, out, "probe: tick 1 ", 30*time.Second)
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	err := m.CreateSnapshot(t.Context(), fcapi.SnapshotCreateParams{SnapshotPath: filepath.Join(dir, "vm.state"), MemFilePath: filepath.Join(dir, "vm.mem")})
	if err == nil || !strings.Contains(err.Error(), "virtio devices (drive disk)") {
		t.Fatalf("CreateSnapshot with a drive: got %v, want an error naming the virtio device", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "vm.state")); !os.IsNotExist(err) {
		t.Errorf("a refused snapshot left a state file: %v", err)
	}
}

// startProbeWith starts the probe after configure has set up m.
func startProbeWith(t *testing.T, cmdline string, configure func(*Machine)) (*Machine, *syncBuffer) {
	t.Helper()
	out := &syncBuffer{}
	m := New(Config{Kernel: probePath(t), Cmdline: cmdline, MemMiB: 32, Serial: out}, testLogger(t))
	t.Cleanup(func() { m.Close() })
	configure(m)
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	return m, out
}
