package nested

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestGuestKernel checks the cached guest kernel: an x86-64 ELF with a PVH
// entry note, built from a config that has every line of the fragment.
func TestGuestKernel(t *testing.T) {
	path := GuestKernel(t)
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	entry, err := PVHEntry(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: PVH entry %#x", path, entry)
	if entry < 0x100000 {
		t.Errorf("PVH entry %#x, want a physical address above 1 MiB", entry)
	}

	built, err := os.ReadFile(filepath.Join(filepath.Dir(path), "config"))
	if err != nil {
		t.Fatal(err)
	}
	fragment, err := os.Open(filepath.Join(root, "guest/kernel/config"))
	if err != nil {
		t.Fatal(err)
	}
	defer fragment.Close()
	lines := strings.Split(string(built), "\n")
	notSet := regexp.MustCompile(`^# (CONFIG_\w+) is not set$`)
	sc := bufio.NewScanner(fragment)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "CONFIG_"):
			if !slices.Contains(lines, line) {
				t.Errorf("built config lacks %q", line)
			}
		case notSet.MatchString(line):
			opt := notSet.FindStringSubmatch(line)[1]
			for _, l := range lines {
				if strings.HasPrefix(l, opt+"=") {
					t.Errorf("built config has %q, want %q", l, line)
				}
			}
		}
	}
}

// guestInit is PID 1 of TestGuestKernelBoots's guest: it reports what the
// kernel gave it and writes a file to its virtio-blk disk.
const guestInit = `#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "guest: $(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo)"
echo "guest: drivers $(ls /sys/bus/virtio/drivers | tr '\n' ' ')"
grep -o 'virtio_mmio.device=[^ ]*' /proc/cmdline
test -c /dev/vsock && echo "guest: /dev/vsock"
mount -t ext4 /dev/vda /mnt && echo "written by the guest" > /mnt/hello && umount /mnt && echo "guest: disk ok"
reboot -f
`

// TestGuestKernelBoots boots the guest kernel under QEMU's microvm machine
// in software emulation on the host, through its PVH entry, with a
// virtio-mmio disk declared on the command line as Firecracker declares
// them, and checks it reaches init, sees its devices and writes the disk.
// It needs no KVM: it checks the kernel config, not a VMM.
func TestGuestKernelBoots(t *testing.T) {
	vmlinux := GuestKernel(t)
	if m := MissingTools(); len(m) > 0 {
		missing(t, "booting the guest kernel needs "+strings.Join(m, ", ")+": run scripts/setup")
	}
	initrd := BusyboxInitramfs(t, guestInit)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	if err := makeExt4(t.Context(), disk, "", 64<<20); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	// acpi=off: the guest has no ACPI, so QEMU puts the virtio-mmio
	// devices on the kernel command line; -no-reboot turns reboot into exit.
	qemu := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-M", "microvm,acpi=off", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "256",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
		"-kernel", vmlinux, "-initrd", initrd, "-append", "console=ttyS0 panic=-1",
		"-drive", "file="+disk+",if=none,id=disk,format=raw", "-device", "virtio-blk-device,drive=disk")
	out, err := qemu.CombinedOutput()
	if err != nil {
		t.Fatalf("QEMU: %v\n%s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "guest:") {
			t.Log(strings.TrimSpace(l))
		}
	}
	for _, want := range []string{"guest: 6.1.", "cpus=2", "virtio_blk", "vmw_vsock_virtio_transport",
		"virtio_mmio.device=", "guest: /dev/vsock", "guest: disk ok"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("guest console lacks %q:\n%s", want, out)
		}
	}
	got, err := exec.Command("debugfs", "-R", "cat /hello", disk).Output()
	if err != nil || !strings.Contains(string(got), "written by the guest") {
		t.Errorf("/hello on the guest's disk = %q, %v; want the guest's line", got, err)
	}
}
