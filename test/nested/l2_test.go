package nested

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	harness "github.com/thawvm/thaw/internal/nested"
)

// l2Init is the L2 guest's PID 1: it proves it reached userspace on the
// guest kernel and resets the machine, which ends thaw-vmm cleanly.
const l2Init = `#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
echo "l2-init: $(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo)"
reboot -f
`

// TestLinuxGuestBootsUnderThawVMM is the harness's point: a normal Linux
// guest (our guest kernel, a busybox initramfs) boots to init under our own
// VMM, thaw-vmm, on a KVM that runs it: L1's here, the host's on hardware
// KVM. The guest's reset must end thaw-vmm with status 0. One vCPU: with
// two, thaw-vmm stops when KVM_RUN on the second returns EAGAIN while it
// waits for its start-up IPI (to be fixed in internal/vmm).
func TestLinuxGuestBootsUnderThawVMM(t *testing.T) {
	dir := t.TempDir()
	build := exec.CommandContext(t.Context(), "go", "build", "-o", filepath.Join(dir, "thaw-vmm"), "github.com/thawvm/thaw/cmd/thaw-vmm")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building thaw-vmm: %v\n%s", err, out)
	}
	for name, from := range map[string]string{"vmlinux": harness.GuestKernel(t), "initrd": harness.BusyboxInitramfs(t, l2Init)} {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"vm.json": `{"boot-source": {"kernel_image_path": "vmlinux", "initrd_path": "initrd",
  "boot_args": "console=ttyS0 reboot=k panic=1"},
 "drives": [], "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}
`,
		"run": "#!/bin/sh\nexec ./thaw-vmm --no-api --config-file vm.json\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	r := harness.Test(t, harness.Payload{Dir: dir})
	out := string(r.Output)
	if r.ExitCode != 0 || !strings.Contains(out, "l2-init: 6.1.") || !strings.Contains(out, "cpus=1") {
		t.Fatalf("thaw-vmm exited %d, want 0 after the guest printed l2-init with 1 CPU; output:\n%s", r.ExitCode, out)
	}
	t.Logf("L2 reached init (nested: %v, payload %v)", r.Nested, r.Run)
}
