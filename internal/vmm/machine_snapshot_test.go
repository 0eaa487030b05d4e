package vmm

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	kabi "github.com/thawvm/thaw/internal/abi/kvm"
	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/testenv"
	"github.com/thawvm/thaw/internal/uffd"
	"github.com/thawvm/thaw/internal/uffd/uffdtest"
	"github.com/thawvm/thaw/internal/vmm/vmstate"
)

var tickRE = regexp.MustCompile(`probe: tick (\d+) sum=([0-9a-f]+)\n`)

// lastTick returns the last complete "tick" line's number and sum.
func lastTick(t *testing.T, out string) (int, string) {
	t.Helper()
	m := tickRE.FindAllStringSubmatch(out, -1)
	if len(m) == 0 {
		t.Fatalf("no tick line in the guest's output:\n%s", out)
	}
	n, _ := strconv.Atoi(m[len(m)-1][1])
	return n, m[len(m)-1][2]
}

// servePages runs a page server for memPath in this process until the
// test ends and returns its socket.
func servePages(t *testing.T, memPath string) string {
	return uffdtest.ServeFile(t, memPath, uffd.Config{})
}

// loadProbe loads a snapshot into a fresh machine and resumes it.
func loadProbe(t *testing.T, p fcapi.SnapshotLoadParams) (*Machine, *testenv.Buffer) {
	t.Helper()
	out := &testenv.Buffer{}
	m := New(Config{Serial: out}, testLogger(t))
	t.Cleanup(func() {
		if err := m.invariants(); err != nil {
			t.Errorf("before Close: %v", err)
		}
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	if err := m.LoadSnapshot(context.Background(), p); err != nil {
		t.Fatalf("LoadSnapshot: %v", err)
	}
	if got := m.State(); got != Paused {
		t.Fatalf("state after LoadSnapshot: got %s, want %s", got, Paused)
	}
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	return m, out
}

// TestSnapshotRestoreProbe pauses the probe guest (2 vCPUs, 64 MiB),
// snapshots it, and loads the snapshot into fresh machines with the File
// and Uffd backends: each continues the probe's tick count from the
// snapshot with the same pattern checksum, through the restored serial
// port, and the original resumes too.
func TestSnapshotRestoreProbe(t *testing.T) {
	testenv.RequireUFFD(t)
	src, out := startProbe(t, "probe.pages=64 probe.ticks=0 probe.spin=2000", 2, 64)
	waitFor(t, out, "probe: tick 3 ", 30*time.Second)
	if err := src.CreateSnapshot(context.Background(), fcapi.SnapshotCreateParams{SnapshotPath: "x", MemFilePath: "y"}); !errors.Is(err, ErrState) {
		t.Errorf("CreateSnapshot of a running machine: got %v, want ErrState", err)
	}
	if err := src.Pause(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	statePath, memPath := filepath.Join(dir, "vmstate"), filepath.Join(dir, "mem")
	if err := src.CreateSnapshot(context.Background(), fcapi.SnapshotCreateParams{SnapshotType: fcapi.SnapshotDiff, SnapshotPath: statePath, MemFilePath: memPath}); err == nil {
		t.Errorf("a Diff snapshot: got nil error, want one saying Full only")
	}
	if err := src.CreateSnapshot(context.Background(), fcapi.SnapshotCreateParams{SnapshotPath: statePath, MemFilePath: memPath}); err != nil {
		t.Fatal(err)
	}
	tick, sum := lastTick(t, out.String())
	checkSavedCPUID(t, statePath, 2)

	for _, b := range []fcapi.MemBackend{
		{BackendType: fcapi.MemBackendFile, BackendPath: memPath},
		{BackendType: fcapi.MemBackendUffd, BackendPath: servePages(t, memPath)},
	} {
		t.Run(string(b.BackendType), func(t *testing.T) {
			m, out2 := loadProbe(t, fcapi.SnapshotLoadParams{SnapshotPath: statePath, MemBackend: &b})
			if got := m.MachineConfig(); got.VcpuCount != 2 || got.MemSizeMib != 64 {
				t.Errorf("machine config after load: got %+v, want the snapshot's 2 vCPUs and 64 MiB", got)
			}
			want := fmt.Sprintf("probe: tick %d sum=%s\n", tick+2, sum)
			waitFor(t, out2, want, 30*time.Second)
			if strings.Contains(out2.String(), "probe: boot") {
				t.Errorf("restored guest booted again:\n%s", out2.String())
			}
			if n, _ := lastTick(t, out2.String()); n <= tick {
				t.Errorf("restored guest's tick: got %d, want more than the snapshot's %d", n, tick)
			}
		})
	}
	if err := src.Resume(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, out, fmt.Sprintf("probe: tick %d sum=%s\n", tick+1, sum), 30*time.Second)
}

func TestLoadSnapshotErrors(t *testing.T) {
	testenv.RequireKVM(t)
	dir := t.TempDir()
	file := &fcapi.MemBackend{BackendType: fcapi.MemBackendFile, BackendPath: filepath.Join(dir, "mem")}
	tests := []struct {
		name string
		p    fcapi.SnapshotLoadParams
		want string
	}{
		{"missing vmstate", fcapi.SnapshotLoadParams{SnapshotPath: filepath.Join(dir, "none"), MemBackend: file}, "no such file"},
		{"network override", fcapi.SnapshotLoadParams{SnapshotPath: "s", MemBackend: file, NetworkOverrides: []fcapi.NetworkOverride{{IfaceID: "eth0", HostDevName: "tap0"}}}, "eth0"},
		{"dirty tracking", fcapi.SnapshotLoadParams{SnapshotPath: "s", MemBackend: file, TrackDirtyPages: true}, "track_dirty_pages"},
	}
	for _, tt := range tests {
		m := New(Config{}, testLogger(t))
		err := m.LoadSnapshot(context.Background(), tt.p)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error containing %q", tt.name, err, tt.want)
		}
		if m.State() != NotStarted {
			t.Errorf("%s: state after a failed load: got %s, want %s", tt.name, m.State(), NotStarted)
		}
		m.Close()
	}
	m, _ := startProbe(t, "probe.ticks=0", 1, 32)
	if err := m.LoadSnapshot(context.Background(), fcapi.SnapshotLoadParams{SnapshotPath: "s", MemBackend: file}); !errors.Is(err, ErrState) {
		t.Errorf("LoadSnapshot on a started machine: got %v, want ErrState", err)
	}
}

// TestSnapshotOfRestoredMachine snapshots a machine restored with the File
// backend over the very files it was restored from — the memory file it
// still maps — and restores that second snapshot: the write must not
// disturb the running clone (the new file is renamed into place; the
// clone keeps the old one), and the second-generation clone continues
// from the second snapshot.
func TestSnapshotOfRestoredMachine(t *testing.T) {
	src, out := startProbe(t, "probe.pages=64 probe.ticks=0 probe.spin=2000", 1, 32)
	waitFor(t, out, "probe: tick 2 ", 30*time.Second)
	if err := src.Pause(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	statePath, memPath := filepath.Join(dir, "vmstate"), filepath.Join(dir, "mem")
	create := fcapi.SnapshotCreateParams{SnapshotPath: statePath, MemFilePath: memPath}
	if err := src.CreateSnapshot(context.Background(), create); err != nil {
		t.Fatal(err)
	}
	_, sum := lastTick(t, out.String())

	gen1, out1 := loadProbe(t, fcapi.SnapshotLoadParams{SnapshotPath: statePath, MemBackend: &fcapi.MemBackend{BackendType: fcapi.MemBackendFile, BackendPath: memPath}})
	tick1, _ := lastTick(t, out.String())
	waitFor(t, out1, fmt.Sprintf("probe: tick %d sum=%s\n", tick1+2, sum), 30*time.Second)
	if err := gen1.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := gen1.CreateSnapshot(context.Background(), create); err != nil {
		t.Fatal(err)
	}
	tick2, _ := lastTick(t, out1.String())
	if err := gen1.Resume(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, out1, fmt.Sprintf("probe: tick %d sum=%s\n", tick2+1, sum), 30*time.Second)

	_, out2 := loadProbe(t, fcapi.SnapshotLoadParams{SnapshotPath: statePath, MemBackend: &fcapi.MemBackend{BackendType: fcapi.MemBackendFile, BackendPath: memPath}})
	waitFor(t, out2, fmt.Sprintf("probe: tick %d sum=%s\n", tick2+1, sum), 30*time.Second)
	if n, _ := lastTick(t, out2.String()); n <= tick2 {
		t.Errorf("second-generation clone's tick: got %d, want more than %d", n, tick2)
	}
}

// checkSavedCPUID checks that the snapshot at statePath holds each vCPU's
// normalised CPUID (internal/vmm/cpuid), not KVM's supported table.
func checkSavedCPUID(t *testing.T, statePath string, vcpus int) {
	t.Helper()
	st, err := vmstate.ReadFile(statePath, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.VCPUs) != vcpus {
		t.Fatalf("snapshot has %d vCPUs, want %d", len(st.VCPUs), vcpus)
	}
	for i, v := range st.VCPUs {
		es := make([]kabi.CPUIDEntry2, len(v.CPUID))
		for j, e := range v.CPUID {
			es[j] = kabi.CPUIDEntry2{Function: e.Function, Index: e.Index, Flags: e.Flags, EAX: e.EAX, EBX: e.EBX, ECX: e.ECX, EDX: e.EDX}
		}
		checkVCPUCPUID(t, fmt.Sprintf("saved vCPU %d", i), i, vcpus, es)
	}
}

// checkVCPUCPUID checks the marks of normalisation in one vCPU's table:
// leaf 1 carries its APIC ID and the vCPU count, and the PMU leaf is empty.
func checkVCPUCPUID(t *testing.T, what string, id, vcpus int, es []kabi.CPUIDEntry2) {
	t.Helper()
	var leaf1, pmu bool
	for _, e := range es {
		switch e.Function {
		case 1:
			leaf1 = true
			if got, gotN := e.EBX>>24, e.EBX>>16&0xff; got != uint32(id) || gotN != uint32(vcpus) {
				t.Errorf("%s: leaf 1 APIC ID %d, count %d; want %d, %d", what, got, gotN, id, vcpus)
			}
		case 0xa:
			pmu = true
			if e.EAX != 0 {
				t.Errorf("%s: leaf 0xA EAX %#x, want 0 (no PMU)", what, e.EAX)
			}
		}
	}
	if !leaf1 || !pmu {
		t.Errorf("%s: leaf 1 present %v, leaf 0xA present %v; want both", what, leaf1, pmu)
	}
}
