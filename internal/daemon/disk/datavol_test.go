package disk

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/daemon/disk/disktest"
	"github.com/thawvm/thaw/internal/testenv"
)

func datavol(args ...string) (string, error) {
	out, err := exec.Command("../../../scripts/datavol", args...).CombinedOutput()
	return string(out), err
}

// TestDataVolScript: scripts/datavol gives an ext4 host a data directory
// that Probe accepts, and running it again changes nothing.
func TestDataVolScript(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "images", "thaw.img"), filepath.Join(dir, "data")
	out, err := datavol(img, mnt, "320M")
	if err != nil {
		t.Fatalf("datavol: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmounting %s: %v", mnt, err)
		}
	})
	if err := Probe(mnt); err != nil {
		t.Errorf("Probe on the data volume: %v", err)
	}
	out, err = datavol(img, mnt, "320M")
	if err != nil || !strings.Contains(out, "already mounted") {
		t.Errorf("second run: %v\n%s\nwant success saying it is already mounted", err, out)
	}
	if n := strings.Count(mountinfo(t), " "+mnt+" "); n != 1 {
		t.Errorf("%s is mounted %d times, want once", mnt, n)
	}
	// A mount point taken by something else, or an image that is not
	// XFS, is refused.
	other := disktest.Mount(t, "tmpfs", 1)
	if out, err := datavol(img, other, "320M"); err == nil || !strings.Contains(out, "already a mount point") {
		t.Errorf("foreign mount point: %v\n%s\nwant a refusal", err, out)
	}
	junk := filepath.Join(dir, "junk.img")
	os.WriteFile(junk, make([]byte, 1<<20), 0o600)
	if out, err := datavol(junk, filepath.Join(dir, "data2"), "320M"); err == nil || !strings.Contains(out, "not xfs") {
		t.Errorf("non-XFS image: %v\n%s\nwant a refusal", err, out)
	}
}

func mountinfo(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
