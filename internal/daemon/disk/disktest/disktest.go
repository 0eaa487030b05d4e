// Package disktest mounts small, real filesystems on loop devices for tests
// that need a particular filesystem (XFS or btrfs with reflinks, ext4 or
// tmpfs without) whatever the host's own filesystem is. It needs root; the
// mkfs tools come from scripts/apt-packages (xfsprogs, btrfs-progs,
// e2fsprogs).
package disktest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/testenv"
)

// minMiB is the smallest image each mkfs accepts (xfsprogs 6 refuses
// filesystems under 300 MiB; btrfs wants about 114 MiB). Images are sparse,
// so the size costs no disk space until written.
var minMiB = map[string]int{"xfs": 300, "btrfs": 128, "ext4": 16}

// mkfs are the commands that format an image for each filesystem type.
var mkfs = map[string][]string{
	"xfs":   {"mkfs.xfs", "-q", "-m", "reflink=1"},
	"btrfs": {"mkfs.btrfs", "-q"},
	"ext4":  {"mkfs.ext4", "-q", "-F"},
}

// Mount creates a filesystem of type fstype ("xfs", "btrfs", "ext4" or
// "tmpfs") of at least sizeMiB, mounts it on a fresh directory and returns
// that directory; cleanup unmounts it (which also frees the loop device).
// It calls testenv.RequireRoot.
func Mount(t testing.TB, fstype string, sizeMiB int) string {
	t.Helper()
	testenv.RequireRoot(t)
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if fstype == "tmpfs" {
		// Inodes bounded like a small disk filesystem's (one per 4 KiB), so
		// that a test can fill it.
		if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, fmt.Sprintf("size=%dm,nr_inodes=%d", sizeMiB, sizeMiB*256)); err != nil {
			t.Fatalf("mounting tmpfs: %v", err)
		}
	} else {
		cmd, ok := mkfs[fstype]
		if !ok {
			t.Fatalf("disktest: unknown filesystem type %q", fstype)
		}
		if _, err := exec.LookPath(cmd[0]); err != nil {
			t.Fatalf("%s not found: run scripts/setup, which installs it from scripts/apt-packages", cmd[0])
		}
		img := filepath.Join(dir, fstype+".img")
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, int64(max(sizeMiB, minMiB[fstype]))<<20); err != nil {
			t.Fatal(err)
		}
		run(t, append(cmd[1:len(cmd):len(cmd)], img), cmd[0])
		run(t, []string{"-t", fstype, "-o", "loop", img, mnt}, "mount")
	}
	t.Cleanup(func() { unmount(t, mnt) })
	return mnt
}

func run(t testing.TB, args []string, name string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
}

// unmount retries briefly: a file a test just closed can keep the
// filesystem busy for a moment.
func unmount(t testing.TB, mnt string) {
	t.Helper()
	var err error
	for range 50 {
		if err = unix.Unmount(mnt, 0); err != unix.EBUSY {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Errorf("unmounting %s: %v", mnt, err)
	}
}
