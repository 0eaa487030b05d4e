// Package disk gives each sandbox its own copy-on-write disk without copying
// the template's: Clone makes the sandbox's disk image a reflink
// (FICLONE, ioctl_ficlone(2)) of the template build's image, which shares
// every block until one side writes it. Filesystems with reflinks include
// XFS (reflink=1, the mkfs default since xfsprogs 5.1), btrfs, bcachefs,
// OCFS2 and ZFS 2.2+. On any other filesystem Clone fails with a
// failed-precondition error saying what to do; it never falls back to a
// full copy, which would make a create cost seconds and gigabytes.
// docs/ARCHITECTURE-daemon.md explains the choice and the alternatives.
package disk

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/errdefs"
)

// remedy is what an operator on a filesystem without reflinks should do.
const remedy = "thaw never copies a template disk; put the data directory on a filesystem with reflinks " +
	"(XFS made with reflink=1, btrfs, bcachefs, ZFS 2.2+), for example a loop-mounted XFS image " +
	"(docs/ARCHITECTURE-daemon.md, \"Copy-on-write disks\")"

// Clone creates dst as a copy-on-write clone of the disk image src. dst must
// not exist and must be on the same filesystem as src. The new file has mode
// 0600. On failure dst does not exist afterwards. Errors: ErrFailedPrecondition
// when the filesystem cannot reflink or src and dst are on different
// filesystems, ErrAlreadyExists when dst exists, ErrResourceExhausted when
// the filesystem is full or over quota.
func Clone(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("opening template disk: %w", err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return fmt.Errorf("opening template disk: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return errdefs.InvalidArgument("template disk %s is a %v, not a regular file", src, fi.Mode().Type())
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return errdefs.AlreadyExists("sandbox disk %s already exists", dst)
	}
	if err != nil {
		return classify(fmt.Errorf("creating sandbox disk: %w", err), dst)
	}
	defer func() {
		if cerr := out.Close(); cerr != nil && err == nil {
			err = classify(fmt.Errorf("closing sandbox disk %s: %w", dst, cerr), dst)
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if err := ficlone(out, in); err != nil {
		return classify(fmt.Errorf("cloning %s to %s: %w", src, dst, err), dst)
	}
	return nil
}

// ficlone issues FICLONE on dst with src as the source. Both descriptors are
// used inside their files' Control callbacks so neither can be closed and
// reused under the ioctl.
func ficlone(dst, src *os.File) error {
	srcRaw, err := src.SyscallConn()
	if err != nil {
		return err
	}
	dstRaw, err := dst.SyscallConn()
	if err != nil {
		return err
	}
	var ioctlErr error
	cerr := srcRaw.Control(func(sfd uintptr) {
		cerr := dstRaw.Control(func(dfd uintptr) {
			ioctlErr = unix.IoctlFileClone(int(dfd), int(sfd))
		})
		if cerr != nil {
			ioctlErr = cerr
		}
	})
	if cerr != nil {
		return cerr
	}
	if ioctlErr != nil {
		return fmt.Errorf("FICLONE: %w", ioctlErr)
	}
	return nil
}

// classify gives err, which happened while making a disk at path, its kind.
func classify(err error, path string) error {
	switch {
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOTTY), errors.Is(err, unix.ENOSYS):
		// ext4, tmpfs and most others answer FICLONE with EOPNOTSUPP;
		// filesystems without the ioctl at all with ENOTTY.
		return errdefs.FailedPrecondition("%w: the %s filesystem holding %s cannot make reflinks: %s", err, fsName(filepath.Dir(path)), filepath.Dir(path), remedy)
	case errors.Is(err, unix.EXDEV):
		return errdefs.FailedPrecondition("%w: template and sandbox disks are on different filesystems; reflinks work only within one, so keep templates and sandboxes under the same data directory", err)
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		return errdefs.Mark(err, errdefs.ErrResourceExhausted)
	}
	return err
}

// Probe checks that dir's filesystem can make reflinks, by cloning a small
// scratch file it creates and removes. thawd runs it on its data directory
// at start, so a wrong filesystem is reported before the first create.
func Probe(dir string) error {
	src, err := os.CreateTemp(dir, ".reflink-probe-*")
	if err != nil {
		return classify(fmt.Errorf("probing reflinks in %s: %w", dir, err), dir+"/.")
	}
	defer os.Remove(src.Name())
	defer src.Close()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return classify(fmt.Errorf("probing reflinks in %s: %w", dir, err), src.Name())
	}
	dst := src.Name() + ".clone"
	if err := Clone(src.Name(), dst); err != nil {
		return fmt.Errorf("probing reflinks in %s: %w", dir, err)
	}
	return os.Remove(dst)
}

// fsName names the filesystem type holding path, for error messages.
func fsName(path string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return "unknown"
	}
	switch uint32(st.Type) {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4" // also ext2 and ext3, which share the magic
	case unix.XFS_SUPER_MAGIC:
		return "xfs (made without reflink=1?)"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	case unix.FUSE_SUPER_MAGIC:
		return "fuse"
	case unix.F2FS_SUPER_MAGIC:
		return "f2fs"
	case unix.BCACHEFS_SUPER_MAGIC:
		return "bcachefs"
	}
	return fmt.Sprintf("unknown (magic %#x)", uint32(st.Type))
}
