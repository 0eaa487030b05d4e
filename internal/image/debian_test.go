package image

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/testenv"
)

// TestBuildDebianBase builds the demo template's disk from the Debian base
// tarball when guest/rootfs/debian.sh has already cached it (CI's setup
// builds it); without the cache the test skips, since debootstrap is minutes
// of network work that a unit test must not start.
func TestBuildDebianBase(t *testing.T) {
	testenv.RequireRoot(t)
	out, err := exec.Command("../../guest/rootfs/debian.sh", "--cached-path").Output()
	tarPath := strings.TrimSpace(string(out))
	if err != nil || tarPath == "" {
		noDebianBase(t)
	}
	img := filepath.Join(t.TempDir(), "debian.ext4")
	start := time.Now()
	res, err := Build(context.Background(), Config{DiskSize: 1 << 30, AgentPath: agentBin(t)}, Tarball(tarPath), img)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	t.Logf("built %s: %d entries, %d MiB content in %v", img, res.Entries, res.ContentBytes>>20, time.Since(start))
	fsck(t, img)
	for _, p := range []string{"/usr/bin/python3", "/bin/sh", "/etc/passwd"} {
		if _, ok := stat(t, img, p); !ok {
			t.Errorf("%s missing from the image", p)
		}
	}
	// usr-merged Debian: /sbin -> usr/sbin.
	checkAgentInjected(t, img, "/usr/sbin")
	_ = os.Remove(img)
}

// noDebianBase skips t, or fails it under THAW_REQUIRE_KVM=1 (CI), where
// scripts/setup has built the Debian base and a missing one is a bug.
func noDebianBase(t *testing.T) {
	t.Helper()
	testenv.Missing(t, "no cached Debian base tarball: run guest/rootfs/debian.sh (scripts/setup does, as root)")
}
