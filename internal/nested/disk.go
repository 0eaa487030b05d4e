package nested

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Disk labels: the L1 init finds its disks by these virtio serials.
const (
	payloadSerial = "thaw-payload"
	resultsSerial = "thaw-results"
)

// makeExt4 creates an ext4 image of size bytes at img holding the tree at
// dir (empty when dir is ""), without mounting anything: mkfs.ext4 -d.
func makeExt4(ctx context.Context, img, dir string, size int64) error {
	f, err := os.Create(img)
	if err != nil {
		return fmt.Errorf("creating disk image: %w", err)
	}
	err = f.Truncate(size) // sparse: only what mkfs writes takes space
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sizing disk image %s: %w", img, err)
	}
	args := []string{"-q", "-F", "-t", "ext4", "-E", "root_owner=0:0,nodiscard"}
	if dir != "" {
		args = append(args, "-d", dir)
	}
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", append(args, img)...).CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4 %s: %w\n%s", img, err, out)
	}
	return nil
}

// payloadImageSize is room for the tree at dir: its bytes plus a quarter
// for ext4's metadata, and 32 MiB more for the journal and small files.
func payloadImageSize(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		n += info.Size() + 4096
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("sizing payload %s: %w", dir, err)
	}
	return n + n/4 + 32<<20, nil
}

// readResults copies the payload's files (/out) and the harness's own
// (/harness: the payload's output) from the results image into dest, with
// debugfs's rdump: no mount, no root.
func readResults(ctx context.Context, img, dest string) error {
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "debugfs", "-R", "rdump /out /harness "+dest, img).CombinedOutput()
	if err != nil {
		return fmt.Errorf("debugfs rdump from %s: %w\n%s", img, err, out)
	}
	// debugfs exits 0 even when a path is missing; look for its complaints.
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "rdump:") || strings.Contains(line, "File not found") {
			return fmt.Errorf("debugfs rdump from %s: %s", img, line)
		}
	}
	return nil
}
