package image

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// writeExt4 makes the ext4 image from the staged tree: mkfs.ext4 -d into a
// file of the disk size, then (when not root) the recorded owners and device
// nodes through debugfs. It writes out+".tmp" and renames it into place.
func writeExt4(ctx context.Context, mkfs string, cfg Config, st *stager, out string) error {
	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("creating %s: %w", tmp, err)
	}
	err = f.Truncate(cfg.DiskSize)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("sizing %s: %w", tmp, err)
	}
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	cmd := exec.CommandContext(ctx, mkfs,
		"-F", "-q", "-t", "ext4",
		"-b", "4096",
		"-m", "0", // no blocks reserved for root: a sandbox disk has one user
		"-L", cfg.Label,
		"-E", "root_owner=0:0",
		"-d", st.dir,
		tmp)
	if b, err := cmd.CombinedOutput(); err != nil {
		msg := strings.TrimSpace(string(b))
		if strings.Contains(msg, "Could not allocate") || strings.Contains(msg, "No space left") {
			return fmt.Errorf("%w: the content does not fit a %d MiB disk (mkfs.ext4: %s): raise the disk size", ErrTooLarge, cfg.DiskSize>>20, lastLine(msg))
		}
		return fmt.Errorf("mkfs.ext4: %v: %s", err, msg)
	}
	if st.deferOwners {
		if err := applyDebugfs(ctx, st, tmp); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, out); err != nil {
		return fmt.Errorf("moving the image into place: %w", err)
	}
	ok = true
	return nil
}

func lastLine(s string) string {
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// debugfsScript writes the commands that give the image the recorded owners
// and device nodes: mknod, then set_inode_field for mode, uid and gid.
func debugfsScript(st *stager) ([]byte, error) {
	var b bytes.Buffer
	devs := make([]string, 0, len(st.devices))
	for p := range st.devices {
		devs = append(devs, p)
	}
	sort.Strings(devs)
	for _, p := range devs {
		if err := debugfsSafe(p); err != nil {
			return nil, err
		}
		d := st.devices[p]
		// debugfs's mknod links a bare name into its working directory.
		fmt.Fprintf(&b, "cd \"%s\"\nmknod \"%s\" %c %d %d\ncd /\n", path.Dir(p), path.Base(p), d.typ, d.major, d.minor)
		kind := uint32(0o020000) // S_IFCHR
		if d.typ == 'b' {
			kind = 0o060000 // S_IFBLK
		}
		fmt.Fprintf(&b, "sif \"%s\" mode 0%o\nsif \"%s\" uid %d\nsif \"%s\" gid %d\n", p, kind|d.mode, p, d.uid, p, d.gid)
	}
	// Every staged path belongs to the builder; give each its recorded
	// owner, or root for directories the image implied but never listed.
	uid, gid := os.Geteuid(), os.Getegid()
	err := filepath.WalkDir(st.dir, func(full string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(st.dir, full)
		if err != nil || rel == "." {
			return err
		}
		p := "/" + filepath.ToSlash(rel)
		o, ok := st.owners[p]
		if !ok {
			o = owner{0, 0}
		}
		mode, fixMode := st.modes[p]
		if o.uid == uid && o.gid == gid && !fixMode {
			return nil
		}
		if err := debugfsSafe(p); err != nil {
			return err
		}
		fmt.Fprintf(&b, "sif \"%s\" uid %d\nsif \"%s\" gid %d\n", p, o.uid, p, o.gid)
		if fixMode {
			fmt.Fprintf(&b, "sif \"%s\" mode 0%o\n", p, mode)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing the staged tree: %w", err)
	}
	return b.Bytes(), nil
}

// debugfsSafe refuses paths debugfs's command parser cannot take quoted.
func debugfsSafe(p string) error {
	if strings.ContainsAny(p, "\"\n\\") {
		return fmt.Errorf("path %q cannot be passed to debugfs to set its owner: build the image as root", p)
	}
	return nil
}

func applyDebugfs(ctx context.Context, st *stager, img string) error {
	script, err := debugfsScript(st)
	if err != nil {
		return err
	}
	sf, err := os.CreateTemp("", "thaw-debugfs-*")
	if err != nil {
		return err
	}
	defer os.Remove(sf.Name())
	if _, err := sf.Write(script); err != nil {
		sf.Close()
		return err
	}
	sf.Close()
	cmd := exec.CommandContext(ctx, "debugfs", "-w", "-f", sf.Name(), img)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = &bytes.Buffer{}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("debugfs: %v: %s", err, stderr.String())
	}
	// debugfs exits 0 even when a command fails; its complaints go to
	// stderr after the version banner.
	for _, l := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		if l != "" && !strings.HasPrefix(l, "debugfs ") {
			return fmt.Errorf("debugfs setting owners: %s", l)
		}
	}
	return nil
}
