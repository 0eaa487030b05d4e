package linux

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/nested"
)

// results mirrors the driver's Results (driver/main.go) for the fields the
// test checks and logs.
type results struct {
	VCPUs            int      `json:"vcpus"`
	MemMiB           int      `json:"mem_mib"`
	Steps            []string `json:"steps"`
	BootToMarkerMS   float64  `json:"boot_to_marker_ms"`
	GuestUptimeS     float64  `json:"guest_uptime_s"`
	RebootToExitMS   float64  `json:"reboot_to_exit_ms"`
	QuietBootMS      float64  `json:"quiet_boot_to_marker_ms"`
	PauseMS          float64  `json:"pause_ms"`
	SnapshotCreateMS float64  `json:"snapshot_create_ms"`
	MemFileMiB       float64  `json:"mem_file_mib"`
	FileLoadMS       float64  `json:"file_load_ms"`
	FileFirstTickMS  float64  `json:"file_first_tick_ms"`
	UffdLoadMS       float64  `json:"uffd_load_ms"`
	UffdFirstTickMS  float64  `json:"uffd_first_tick_ms"`
	UffdFaultsServed uint64   `json:"uffd_faults_served"`
	UffdFaultPages   uint64   `json:"uffd_fault_pages"`
	ClockJumpMaxMS   float64  `json:"clock_jump_max_ms"`
	TickGapMaxMS     float64  `json:"tick_gap_max_ms"`
}

// TestLinuxGuest boots the real guest kernel under thaw-vmm where Linux
// guests run and takes it through every step the driver knows (see
// driver/main.go), in one payload so that the nested harness boots QEMU
// once. A failing step fails the test with the driver's error and the
// guest's serial output.
func TestLinuxGuest(t *testing.T) {
	kernel := nested.GuestKernel(t)
	dir := t.TempDir()
	for bin, pkg := range map[string]string{
		"thaw-vmm":  "github.com/thawvm/thaw/cmd/thaw-vmm",
		"driver":    "github.com/thawvm/thaw/test/linux/driver",
		"guestinit": "github.com/thawvm/thaw/test/linux/guestinit",
	} {
		goBuild(t, pkg, filepath.Join(dir, bin))
	}
	initrd(t, filepath.Join(dir, "guestinit"), filepath.Join(dir, "initrd.cpio"))
	if err := os.Remove(filepath.Join(dir, "guestinit")); err != nil {
		t.Fatal(err)
	}
	copyFile(t, kernel, filepath.Join(dir, "vmlinux"))
	run := "#!/bin/sh\nexec ./driver -vmm ./thaw-vmm -kernel ./vmlinux -initrd ./initrd.cpio -results \"$THAW_RESULTS\"\n"
	if err := os.WriteFile(filepath.Join(dir, "run"), []byte(run), 0o755); err != nil {
		t.Fatal(err)
	}

	r := nested.Test(t, nested.Payload{Dir: dir, Timeout: 8 * time.Minute})
	t.Logf("driver output (nested: %v):\n%s", r.Nested, r.Output)
	var res results
	data, err := os.ReadFile(filepath.Join(r.Files, "linux.json"))
	if err == nil {
		err = json.Unmarshal(data, &res)
	}
	if err != nil {
		t.Errorf("reading the driver's results: %v", err)
	}
	if r.ExitCode != 0 {
		for _, name := range []string{"boot", "template", "restore-File", "restore-Uffd"} {
			if log, err := os.ReadFile(filepath.Join(r.Files, name+".log")); err == nil && len(log) > 0 {
				t.Logf("%s thaw-vmm log:\n%s", name, log)
			}
		}
		t.Fatalf("driver exited %d, want 0 (steps passed: %v)", r.ExitCode, res.Steps)
	}
	if got, want := strings.Join(res.Steps, ","), "boot,snapshot+restore"; got != want {
		t.Errorf("steps passed: got %s, want %s", got, want)
	}
	if res.UffdFaultsServed == 0 {
		t.Errorf("the Uffd restore ran with no page fault served: the page server was not in the path")
	}
	t.Logf("guest: %d vCPUs, %d MiB", res.VCPUs, res.MemMiB)
	t.Logf("boot: InstanceStart → init marker %.0f ms (guest uptime %.2f s); reboot → thaw-vmm exit %.0f ms",
		res.BootToMarkerMS, res.GuestUptimeS, res.RebootToExitMS)
	t.Logf("boot with quiet: InstanceStart → init marker %.0f ms", res.QuietBootMS)
	t.Logf("snapshot: pause %.1f ms, Full snapshot %.0f ms (%.0f MiB memory file)", res.PauseMS, res.SnapshotCreateMS, res.MemFileMiB)
	t.Logf("restore File: load %.1f ms, load → first tick %.0f ms", res.FileLoadMS, res.FileFirstTickMS)
	t.Logf("restore Uffd (on demand): load %.1f ms, load → first tick %.0f ms, %d faults, %d pages installed",
		res.UffdLoadMS, res.UffdFirstTickMS, res.UffdFaultsServed, res.UffdFaultPages)
	t.Logf("clocks across restores: largest monotonic gap between ticks %.0f ms, largest realtime-monotonic change %.1f ms",
		res.TickGapMaxMS, res.ClockJumpMaxMS)
}

// goBuild builds pkg as a static binary: it runs in L1 or L2, where there is
// no C library.
func goBuild(t *testing.T, pkg, out string) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), "go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

// initrd writes an uncompressed newc initramfs holding init as /init. The
// kernel's built-in initramfs already provides /dev/console, which init's
// standard streams need before devtmpfs is mounted.
func initrd(t *testing.T, init, out string) {
	t.Helper()
	root := t.TempDir()
	copyFile(t, init, filepath.Join(root, "init"))
	if err := os.Chmod(filepath.Join(root, "init"), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.CommandContext(t.Context(), "cpio", "--quiet", "-o", "-H", "newc", "--owner=0:0", "--reproducible")
	cmd.Dir = root
	cmd.Stdin = strings.NewReader("init\n")
	cmd.Stdout = f
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("cpio: %v\n%s", err, stderr.String())
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
