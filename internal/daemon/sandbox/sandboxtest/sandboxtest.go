// Package sandboxtest gives thawd's tests what a real sandbox needs on any
// /dev/kvm, PVM included: the thaw-shim, thaw-vmm and thawd binaries built
// from this checkout, and a probe-guest snapshot (VM state + memory file)
// taken through thaw-vmm's Firecracker API, to register as a template whose
// ready check is a serial marker.
package sandboxtest

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thawvm/thaw/guest/probe"
	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/procstat"
	"github.com/thawvm/thaw/internal/testenv"
)

// ReadyMarker is what the probe prints on every tick; a restored probe
// prints it again within milliseconds.
const ReadyMarker = "probe: tick "

// ProbeMemMiB and ProbeVCPUs are the probe template's machine.
const (
	ProbeMemMiB = 64
	ProbeVCPUs  = 2
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Binaries builds cmd/thaw-shim, cmd/thaw-vmm and cmd/thawd (static,
// CGO_ENABLED=0) once per test binary into a temporary directory and returns it (remove it with
// Cleanup from TestMain).
func Binaries(t testing.TB) (dir string) {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "thaw-bins-")
		if buildErr != nil {
			return
		}
		for _, cmd := range []string{"thaw-shim", "thaw-vmm", "thawd"} {
			// Built as they are deployed (scripts/demo): static, without
			// cgo, so that per-process memory measured here is what a
			// host pays.
			build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(binDir, cmd), "github.com/thawvm/thaw/cmd/"+cmd)
			build.Env = append(os.Environ(), "CGO_ENABLED=0")
			out, err := build.CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", cmd, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// Cleanup removes the binaries Binaries built.
func Cleanup() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

// Snapshot is a probe-guest snapshot's files and the machine it was
// taken of (register it with these).
type Snapshot struct {
	VMState, Memory, Rootfs, Kernel string
	MemMiB, VCPUs                   int
}

// ProbeSnapshot boots the probe guest in a thaw-vmm, lets it tick, pauses
// it and takes a Full snapshot into dir through the API. Rootfs is a small
// placeholder disk the probe does not open (it has no drive); a sandbox
// still gets its reflink clone.
func ProbeSnapshot(t testing.TB, dir string) Snapshot {
	t.Helper()
	return ProbeSnapshotWith(t, dir, ProbeConfig{})
}

// IdleProbeSnapshot is ProbeSnapshot of an idle probe (ProbeConfig.Idle,
// an 8-page pattern): it prints a tick, then halts with interrupts off
// until the VMM resumes it, so a sandbox restored from it costs no CPU
// once ready and prints one tick per resume (a pause and resume through
// the VMM's API proves it alive).
func IdleProbeSnapshot(t testing.TB, dir string) Snapshot {
	t.Helper()
	return ProbeSnapshotWith(t, dir, ProbeConfig{Idle: true, Pages: 8})
}

// RootDriveID is the drive_id of ProbeSnapshotWithDrive's root drive.
const RootDriveID = "rootfs"

// ProbeSnapshotWithDrive is ProbeSnapshot with a root drive backed by
// drive (an absolute path the snapshot records), which the probe re-reads
// on every tick, printing "probe: blk reread tick=<n> status=<s>
// sum=<FNV-1a of the first 4 KiB>".
func ProbeSnapshotWithDrive(t testing.TB, dir, drive string) Snapshot {
	t.Helper()
	return ProbeSnapshotWith(t, dir, ProbeConfig{Drive: drive})
}

// ProbeConfig varies the probe template. Zero fields give ProbeSnapshot's.
type ProbeConfig struct {
	// Drive, when set, is the root drive's backing file (see
	// ProbeSnapshotWithDrive).
	Drive string
	// WorkingSetMiB, when positive, gives the probe a working set of that
	// many MiB (probe.ws), every page non-zero and distinct, which it
	// re-checks WorkingSetChunk pages per tick (probe.ws.chunk, default
	// 256), printing WorkingSetPass after each full pass ("ok", or the
	// bad pages). Its memory grows to hold it: MemMiB is 64 + the set.
	// A restore of this snapshot, and its recording run, touch the whole
	// set within a pass, so the access log holds it all.
	WorkingSetMiB   int
	WorkingSetChunk int
	// Vsock gives the probe a vsock device (guest CID 3), on which it
	// serves an echo port (1024) and nothing else: no agent answers.
	Vsock bool
	// Pages is probe.pages, the pattern the probe checksums on every tick
	// [64]; Spin is probe.spin, the loop iterations between ticks [2000].
	// Both set how long a tick takes (on PVM, 64 pages are ~0.3 s).
	Pages, Spin int
	// Idle makes the probe halt with interrupts off after each tick
	// (probe.idle=1) until thaw-vmm's resume wakes it: one tick per
	// resume, no host CPU in between. The snapshot is taken once every
	// vCPU thread sleeps in KVM, so a restored guest resumes from its HLT.
	Idle bool
}

// WorkingSetPass starts the line the probe prints after each pass over
// its working set: "probe: ws pass <n> ok" or "... bad=<pages> first=<page>".
const WorkingSetPass = "probe: ws pass "

// ProbeSnapshotWith is ProbeSnapshot for the probe configured by cfg.
func ProbeSnapshotWith(t testing.TB, dir string, cfg ProbeConfig) Snapshot {
	t.Helper()
	testenv.RequireKVM(t)
	if testenv.KVMIsPVM() {
		t.Log("kvm_pvm: the probe guest runs directly (interrupts off)")
	}
	kernel, err := probe.Build(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	vmm := filepath.Join(Binaries(t), "thaw-vmm")
	sock := filepath.Join(dir, "template-api.sock")
	cmd := exec.Command(vmm, "--api-sock", sock, "--id", "template")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	ticks := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), ReadyMarker) {
				select {
				case ticks <- sc.Text():
				default:
				}
			}
		}
	}()
	// Filling the working set runs at about 20 MiB/s on PVM (emulated).
	bound := 60*time.Second + time.Duration(cfg.WorkingSetMiB)*time.Second/2
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	c := fcapi.NewClient(sock)
	defer c.Close()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	spin := cmp.Or(cfg.Spin, 2000)
	args := fmt.Sprintf("probe.pages=%d probe.ticks=0 probe.spin=%d", cmp.Or(cfg.Pages, 64), spin)
	memMiB := ProbeMemMiB
	if cfg.WorkingSetMiB > 0 {
		// The working set starts at 64 MiB, above the probe's image and pattern.
		memMiB += cfg.WorkingSetMiB
		args += fmt.Sprintf(" probe.ws=%d probe.ws.chunk=%d", cfg.WorkingSetMiB, cmp.Or(cfg.WorkingSetChunk, 256))
	}
	if cfg.Idle {
		args += " probe.idle=1"
	}
	if cfg.Vsock {
		if err := c.PutVsock(ctx, fcapi.Vsock{GuestCID: 3, UDSPath: filepath.Join(dir, "template-vsock.sock")}); err != nil {
			t.Fatal(err)
		}
	}
	if cfg.Drive != "" {
		args += " probe.blk.every=1"
		if err := c.PutDrive(ctx, fcapi.Drive{DriveID: RootDriveID, PathOnHost: cfg.Drive, IsRootDevice: true}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: kernel, BootArgs: args}); err != nil {
		t.Fatal(err)
	}
	if err := c.PutMachineConfig(ctx, fcapi.MachineConfig{VcpuCount: ProbeVCPUs, MemSizeMib: memMiB}); err != nil {
		t.Fatal(err)
	}
	if err := c.InstanceStart(ctx); err != nil {
		t.Fatal(err)
	}
	wantTicks := 2
	if cfg.Idle {
		wantTicks = 1 // it prints no other until resumed
	}
	for range wantTicks {
		select {
		case <-ticks:
		case <-ctx.Done():
			t.Fatalf("the probe guest printed no ticks within %v", bound)
		}
	}
	if cfg.Idle {
		waitVCPUsIdle(ctx, t, cmd.Process.Pid)
	}
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	s := Snapshot{VMState: filepath.Join(dir, "vmstate"), Memory: filepath.Join(dir, "mem"), Rootfs: filepath.Join(dir, "rootfs.ext4"), Kernel: kernel,
		MemMiB: memMiB, VCPUs: ProbeVCPUs}
	if err := c.CreateSnapshot(ctx, fcapi.SnapshotCreateParams{SnapshotType: fcapi.SnapshotFull, SnapshotPath: s.VMState, MemFilePath: s.Memory}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.Rootfs, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// waitVCPUsIdle waits until every vCPU thread of the VMM process pid
// sleeps in KVM (procstat.Thread.InKVMBlock).
func waitVCPUsIdle(ctx context.Context, t testing.TB, pid int) {
	t.Helper()
	for {
		vcpus, idle, err := procstat.VCPUsIdle(pid)
		if err != nil {
			t.Fatal(err)
		}
		if vcpus == ProbeVCPUs && idle == vcpus {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the idle probe's vCPU threads did not all halt: %d of %d sleep in KVM", idle, vcpus)
		case <-time.After(5 * time.Millisecond):
		}
	}
}
