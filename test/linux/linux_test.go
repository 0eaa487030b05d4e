package linux

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/nested"
	"github.com/thawvm/thaw/test/linux/wire"
)

// VMMEnv names a static VMM binary to drive instead of the checkout's
// thaw-vmm: another build, or a firecracker binary for side-by-side
// numbers (the driver speaks only Firecracker's API and flags).
const VMMEnv = "THAW_LINUX_VMM"

// KVMTraceEnv, set to 1, records KVM's trace events (kvm:*) in L1 while
// the driver runs. When the driver fails, the results get the trace's
// tail (kvm.trace), the vmstate of the last snapshot and, if a guest
// triple-faulted, its memory (shutdown.mem, thaw-vmm's
// THAW_VMM_SHUTDOWN_DUMP). The trace stops at the first shutdown exit
// (SVM exit code 0x7f): on AMD, KVM reinitialises a vCPU on that exit, so
// the trace's last kvm_exit is the only record of the rip and of the
// exception being delivered (intr_info).
const KVMTraceEnv = "THAW_LINUX_KVM_TRACE"

const kvmTraceStart = `t=/sys/kernel/tracing
mount -t tracefs nodev $t 2>/dev/null
echo 16384 > $t/buffer_size_kb
echo 'traceoff if exit_reason == 127' > $t/events/kvm/kvm_exit/trigger
echo 1 > $t/events/kvm/enable
echo 1 > $t/tracing_on
export THAW_VMM_SHUTDOWN_DUMP="$THAW_RESULTS/shutdown.mem"
`

const kvmTraceStop = `echo 0 > $t/tracing_on
if [ $rc != 0 ]; then
	tail -n 100000 $t/trace > "$THAW_RESULTS/kvm.trace"
	cp "$work/vmstate" "$THAW_RESULTS/" 2>/dev/null
fi
`

// driverHang is the driver's exit code for a guest that made no progress
// (driver.ExitHang).
const driverHang = 3

// results mirrors the driver's Results (driver/main.go) for the fields the
// test checks and logs.
type results struct {
	VCPUs                 int      `json:"vcpus"`
	MemMiB                int      `json:"mem_mib"`
	Steps                 []string `json:"steps"`
	BootToMarkerMS        float64  `json:"boot_to_marker_ms"`
	GuestUptimeS          float64  `json:"guest_uptime_s"`
	RebootToExitMS        float64  `json:"reboot_to_exit_ms"`
	FastBootMS            float64  `json:"fast_boot_to_marker_ms"`
	VsockGuestToHostMiBps float64  `json:"vsock_guest_to_host_mib_s"`
	VsockEchoMiBps        float64  `json:"vsock_echo_mib_s"`
	AgentProtocol         int      `json:"agent_protocol"`
	PauseMS               float64  `json:"pause_ms"`
	SnapshotCreateMS      float64  `json:"snapshot_create_ms"`
	MemFileMiB            float64  `json:"mem_file_mib"`
	FileLoadMS            float64  `json:"file_load_ms"`
	FileFirstTickMS       float64  `json:"file_first_tick_ms"`
	UffdLoadMS            float64  `json:"uffd_load_ms"`
	UffdFirstTickMS       float64  `json:"uffd_first_tick_ms"`
	FileAgentHealthyMS    float64  `json:"file_agent_healthy_ms"`
	UffdAgentHealthyMS    float64  `json:"uffd_agent_healthy_ms"`
	FileEchoMiBps         float64  `json:"file_echo_mib_s"`
	UffdEchoMiBps         float64  `json:"uffd_echo_mib_s"`
	UffdFaultsServed      uint64   `json:"uffd_faults_served"`
	UffdFaultPages        uint64   `json:"uffd_fault_pages"`
	ClockJumpMaxMS        float64  `json:"clock_jump_max_ms"`
	TickGapMaxMS          float64  `json:"tick_gap_max_ms"`
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
		"thaw-vmm":   "github.com/thawvm/thaw/cmd/thaw-vmm",
		"driver":     "github.com/thawvm/thaw/test/linux/driver",
		"guestinit":  "github.com/thawvm/thaw/test/linux/guestinit",
		"thaw-agent": "github.com/thawvm/thaw/cmd/thaw-agent",
	} {
		goBuild(t, pkg, filepath.Join(dir, bin))
	}
	if other := os.Getenv(VMMEnv); other != "" {
		t.Logf("driving %s instead of this checkout's thaw-vmm (%s)", other, VMMEnv)
		copyFile(t, other, filepath.Join(dir, "thaw-vmm"))
		if err := os.Chmod(filepath.Join(dir, "thaw-vmm"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	initrd(t, filepath.Join(dir, "guestinit"), filepath.Join(dir, "thaw-agent"), filepath.Join(dir, "initrd.cpio"))
	for _, f := range []string{"guestinit", "thaw-agent"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, kernel, filepath.Join(dir, "vmlinux"))
	hostSum := dataDisk(t, filepath.Join(dir, "disk.ext4"))
	// In L1 (THAW_NESTED=1) KVM runs on QEMU TCG's emulated SVM, which
	// does not pass the guest's XSETBV to KVM: KVM then reports XSAVE
	// sizes for an XCR0 the guest did not set (the guest kernel's "XSAVE
	// consistency problem" dump) and reloads a stale XCR0 on entry. Hide
	// XSAVE there; on hardware KVM the guest keeps it. L1's KVM uses
	// shadow paging there (the harness's default, nested.NestedPagingEnv):
	// QEMU's emulated nested paging triple-faults these guests.
	trace := os.Getenv(KVMTraceEnv) == "1"
	run := "#!/bin/sh\nwork=$(mktemp -d) || exit 1\nif [ \"$THAW_NESTED\" = 1 ]; then\n\texport THAW_VMM_XSAVE=false\nfi\n"
	if trace {
		run += kvmTraceStart
	}
	run += "./driver -vmm ./thaw-vmm -kernel ./vmlinux -initrd ./initrd.cpio -disk ./disk.ext4 -work \"$work\" -results \"$THAW_RESULTS\"\nrc=$?\n"
	if trace {
		run += kvmTraceStop
	}
	run += "rm -rf \"$work\"\nexit $rc\n"
	if err := os.WriteFile(filepath.Join(dir, "run"), []byte(run), 0o755); err != nil {
		t.Fatal(err)
	}

	p := nested.Payload{Dir: dir, Timeout: 5 * time.Minute}
	r := nested.Test(t, p)
	if r.ExitCode == driverHang {
		t.Logf("a guest made no progress (driver exit %d); retrying once, as the harness does for L1 hangs. Output:\n%s", driverHang, r.Output)
		r = nested.Test(t, p)
	}
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
		for _, name := range []string{"boot", "devices", "template", "restore-File", "restore-Uffd"} {
			if log, err := os.ReadFile(filepath.Join(r.Files, name+".log")); err == nil && len(log) > 0 {
				t.Logf("%s thaw-vmm log:\n%s", name, log)
			}
		}
		t.Fatalf("driver exited %d, want 0 (steps passed: %v)", r.ExitCode, res.Steps)
	}
	if got, want := strings.Join(res.Steps, ","), "boot,devices,snapshot+restore"; got != want {
		t.Errorf("steps passed: got %s, want %s", got, want)
	}
	// The guest's file, read back from the drive after the guest shut down.
	guestTxt := debugfsCat(t, filepath.Join(r.Files, "disk.ext4"), "/guest.txt")
	if want := fmt.Sprintf("seed=%d host.bin sha256=%x\n", wire.Seed, hostSum); guestTxt != want {
		t.Errorf("guest.txt on the drive after shutdown: got %q, want %q", guestTxt, want)
	}
	if res.AgentProtocol == 0 {
		t.Errorf("the guest agent's health reported no protocol version")
	}
	if res.FileAgentHealthyMS == 0 || res.UffdAgentHealthyMS == 0 || res.FileEchoMiBps == 0 || res.UffdEchoMiBps == 0 {
		t.Errorf("a restore passed without recording its vsock checks: agent healthy after %.0f/%.0f ms, echo %.1f/%.1f MiB/s (File/Uffd)",
			res.FileAgentHealthyMS, res.UffdAgentHealthyMS, res.FileEchoMiBps, res.UffdEchoMiBps)
	}
	if res.UffdFaultsServed == 0 {
		t.Errorf("the Uffd restore ran with no page fault served: the page server was not in the path")
	}
	t.Logf("guest: %d vCPUs, %d MiB", res.VCPUs, res.MemMiB)
	t.Logf("boot: InstanceStart → init marker %.0f ms (guest uptime %.2f s); reboot → thaw-vmm exit %.0f ms",
		res.BootToMarkerMS, res.GuestUptimeS, res.RebootToExitMS)
	t.Logf("boot with the fast arguments (quiet, i8042 and 8250 settings): InstanceStart → init marker %.0f ms", res.FastBootMS)
	t.Logf("vsock: guest → host %.1f MiB/s; host → guest → host echo %.1f MiB/s", res.VsockGuestToHostMiBps, res.VsockEchoMiBps)
	t.Logf("snapshot: pause %.1f ms, Full snapshot %.0f ms (%.0f MiB memory file)", res.PauseMS, res.SnapshotCreateMS, res.MemFileMiB)
	t.Logf("restore File: load %.1f ms, load → first tick %.0f ms, load → agent healthy %.0f ms, new-connection echo %.1f MiB/s",
		res.FileLoadMS, res.FileFirstTickMS, res.FileAgentHealthyMS, res.FileEchoMiBps)
	t.Logf("restore Uffd (on demand): load %.1f ms, load → first tick %.0f ms, load → agent healthy %.0f ms, new-connection echo %.1f MiB/s, %d faults, %d pages installed",
		res.UffdLoadMS, res.UffdFirstTickMS, res.UffdAgentHealthyMS, res.UffdEchoMiBps, res.UffdFaultsServed, res.UffdFaultPages)
	t.Logf("clocks across restores: largest monotonic gap between ticks %.0f ms, largest realtime-monotonic change %.1f ms",
		res.TickGapMaxMS, res.ClockJumpMaxMS)
}

// dataDisk writes a 64 MiB ext4 image holding host.bin (random, 1 MiB)
// and returns host.bin's SHA-256, which the guest must write back.
func dataDisk(t *testing.T, img string) [32]byte {
	t.Helper()
	root := t.TempDir()
	data := make([]byte, 1<<20)
	rand.Read(data)
	if err := os.WriteFile(filepath.Join(root, "host.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), "mkfs.ext4", "-q", "-F", "-d", root, img, "64M")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, b)
	}
	return sha256.Sum256(data)
}

// debugfsCat returns a file's contents from an ext4 image without
// mounting it.
func debugfsCat(t *testing.T, img, path string) string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), "debugfs", "-R", "cat "+path, img)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("debugfs -R 'cat %s' %s: %v\n%s", path, img, err, stderr.String())
	}
	return string(out)
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

// initrd writes an uncompressed newc initramfs holding init as /init, the
// agent as /thaw-agent, and an /etc/passwd and /etc/group naming root (the
// agent looks owners up there). The kernel's built-in initramfs already
// provides /dev/console, which init's standard streams need before
// devtmpfs is mounted.
func initrd(t *testing.T, init, agent, out string) {
	t.Helper()
	root := t.TempDir()
	copyFile(t, init, filepath.Join(root, "init"))
	copyFile(t, agent, filepath.Join(root, "thaw-agent"))
	for _, f := range []string{"init", "thaw-agent"} {
		if err := os.Chmod(filepath.Join(root, f), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"passwd": "root:x:0:0:root:/:/init\n", "group": "root:x:0:\n"} {
		if err := os.WriteFile(filepath.Join(root, "etc", name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.CommandContext(t.Context(), "cpio", "--quiet", "-o", "-H", "newc", "--owner=0:0", "--reproducible")
	cmd.Dir = root
	cmd.Stdin = strings.NewReader("init\nthaw-agent\netc\netc/passwd\netc/group\n")
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
