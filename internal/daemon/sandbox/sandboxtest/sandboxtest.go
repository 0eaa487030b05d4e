// Package sandboxtest gives thawd's tests what a real sandbox needs on any
// /dev/kvm, PVM included: the thaw-shim, thaw-vmm and thawd binaries built
// from this checkout, and a probe-guest snapshot (VM state + memory file)
// taken through thaw-vmm's Firecracker API, to register as a template whose
// ready check is a serial marker.
package sandboxtest

import (
	"bufio"
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

// Binaries builds cmd/thaw-shim, cmd/thaw-vmm and cmd/thawd once per test
// binary into a temporary directory and returns it (remove it with
// Cleanup from TestMain).
func Binaries(t testing.TB) (dir string) {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "thaw-bins-")
		if buildErr != nil {
			return
		}
		for _, cmd := range []string{"thaw-shim", "thaw-vmm", "thawd"} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, cmd), "github.com/thawvm/thaw/cmd/"+cmd).CombinedOutput()
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

// Snapshot is a probe-guest snapshot's files.
type Snapshot struct {
	VMState, Memory, Rootfs, Kernel string
}

// ProbeSnapshot boots the probe guest in a thaw-vmm, lets it tick, pauses
// it and takes a Full snapshot into dir through the API. Rootfs is a small
// placeholder disk (thaw-vmm has no virtio-blk yet, so the probe does not
// open it; a sandbox still gets its reflink clone).
func ProbeSnapshot(t testing.TB, dir string) Snapshot {
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
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := fcapi.NewClient(sock)
	defer c.Close()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: kernel, BootArgs: "probe.pages=64 probe.ticks=0 probe.spin=2000"}); err != nil {
		t.Fatal(err)
	}
	if err := c.PutMachineConfig(ctx, fcapi.MachineConfig{VcpuCount: ProbeVCPUs, MemSizeMib: ProbeMemMiB}); err != nil {
		t.Fatal(err)
	}
	if err := c.InstanceStart(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case <-ticks:
		case <-ctx.Done():
			t.Fatal("the probe guest printed no ticks within 60s")
		}
	}
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	s := Snapshot{VMState: filepath.Join(dir, "vmstate"), Memory: filepath.Join(dir, "mem"), Rootfs: filepath.Join(dir, "rootfs.ext4"), Kernel: kernel}
	if err := c.CreateSnapshot(ctx, fcapi.SnapshotCreateParams{SnapshotType: fcapi.SnapshotFull, SnapshotPath: s.VMState, MemFilePath: s.Memory}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.Rootfs, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}
