package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Whiteout names (OCI image spec, layer.md "Whiteouts").
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// stager builds the root tree in a staging directory. Every file system call
// goes through an *os.Root, which refuses to follow a symlink out of the
// tree, so a layer that plants "etc -> /" and then writes "etc/passwd" gets
// an error, not a write to the host.
type stager struct {
	dir  string
	root *os.Root

	maxContent int64
	content    int64 // bytes of file content written
	entries    int
	blocks     int64 // estimated 4 KiB blocks of data and directories

	// deferOwners is set when not running as root: ownership and device
	// nodes are recorded here and written with debugfs after mkfs.
	deferOwners bool
	owners      map[string]owner // "/path" → owner, when deferOwners
	devices     map[string]device
	// modes holds full st_mode values (type bits included) that the
	// builder could not stage as they are, when deferOwners: files and
	// directories are staged with the owner's read/write(/search) bits
	// added, so that later layers and mkfs can get at them.
	modes map[string]uint32

	layer map[string]bool // paths written by the current layer
}

type owner struct{ uid, gid int }

type device struct {
	typ          byte // 'c' or 'b'
	major, minor uint32
	mode         uint32
	owner
}

func newStager(dir string, maxContent int64, deferOwners bool) (*stager, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("opening staging directory: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		root.Close()
		return nil, err
	}
	return &stager{
		dir:         dir,
		root:        root,
		maxContent:  maxContent,
		deferOwners: deferOwners,
		owners:      make(map[string]owner),
		devices:     make(map[string]device),
		modes:       make(map[string]uint32),
	}, nil
}

func (st *stager) close() { st.root.Close() }

// cleanName turns a tar entry name into a path relative to the root ("." for
// the root itself). Names with ".." components or NUL bytes are refused, not
// rewritten: a well-formed image never needs them.
func cleanName(name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("%w: entry %q contains a NUL byte", ErrUnsafePath, name)
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("%w: entry %q has a \"..\" component, which could escape the root", ErrUnsafePath, name)
		}
	}
	rel := strings.TrimPrefix(path.Clean("/"+name), "/")
	if rel == "" {
		rel = "."
	}
	return rel, nil
}

// rootErr marks errors from os.Root refusing a path that leaves the tree.
func rootErr(what, rel string, err error) error {
	// os.Root reports escapes as a *PathError whose message says so; it
	// exports no sentinel for it.
	if err != nil && strings.Contains(err.Error(), "escapes from parent") {
		return fmt.Errorf("%w: %s %q goes through a symlink that leaves the root", ErrUnsafePath, what, "/"+rel)
	}
	if err != nil {
		return fmt.Errorf("%s /%s: %w", what, rel, err)
	}
	return nil
}

// applyTar applies one tar stream (a layer, or a whole tarball) in order.
// With whiteouts, OCI whiteout entries delete what lower layers wrote.
func (st *stager) applyTar(ctx context.Context, r io.Reader, whiteouts bool) error {
	st.layer = make(map[string]bool)
	tr := tar.NewReader(r)
	for n := 0; ; n++ {
		if n%256 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: reading tar entry: %v", ErrBadLayer, err)
		}
		if err := st.applyEntry(hdr, tr, whiteouts); err != nil {
			return err
		}
	}
}

func (st *stager) applyEntry(hdr *tar.Header, r io.Reader, whiteouts bool) error {
	rel, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	dir, base := path.Dir(rel), path.Base(rel)
	if whiteouts && strings.HasPrefix(base, whiteoutPrefix) {
		switch {
		case base == whiteoutOpaque:
			return st.opaque(dir)
		case strings.HasPrefix(base, whiteoutMeta):
			return nil // other AUFS metadata: nothing to do
		}
		name := strings.TrimPrefix(base, whiteoutPrefix)
		if name == "" || name == "." || name == ".." {
			return fmt.Errorf("%w: whiteout %q names no file in its directory", ErrUnsafePath, hdr.Name)
		}
		return st.remove(path.Join(dir, name))
	}
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader, tar.TypeXHeader:
		return nil
	}
	if rel == "." {
		if hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("%w: entry %q names the root but is not a directory", ErrUnsafePath, hdr.Name)
		}
		return st.setMeta(rel, hdr)
	}
	if dir != "." {
		if err := rootErr("creating parent directory", dir, st.root.MkdirAll(dir, 0o755)); err != nil {
			return err
		}
	}
	// Replace what a lower layer put here, without following a symlink in
	// the final component; directories merge.
	if fi, err := st.root.Lstat(rel); err == nil {
		if !(fi.IsDir() && hdr.Typeflag == tar.TypeDir) {
			if err := st.remove(rel); err != nil {
				return err
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return rootErr("inspecting", rel, err)
	}

	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := st.root.Mkdir(rel, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return rootErr("creating directory", rel, err)
		}
		st.blocks++
	case tar.TypeReg:
		if err := st.writeFile(rel, hdr, r); err != nil {
			return err
		}
	case tar.TypeSymlink:
		// Creating a link never follows it; what it points at is the
		// image's business.
		if err := st.root.Symlink(hdr.Linkname, rel); err != nil {
			return rootErr("creating symlink", rel, err)
		}
		if len(hdr.Linkname) > 60 {
			st.blocks++ // ext4 stores short targets in the inode
		}
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil {
			return err
		}
		if err := st.root.Link(target, rel); err != nil {
			return rootErr(fmt.Sprintf("hard-linking to /%s as", target), rel, err)
		}
		if st.deferOwners {
			// Same inode: debugfs must give the link's path the
			// target's owner and mode, not the builder's defaults.
			if o, ok := st.owners["/"+target]; ok {
				st.owners["/"+rel] = o
			}
			if m, ok := st.modes["/"+target]; ok {
				st.modes["/"+rel] = m
			}
		}
		st.layer[rel] = true
		st.entries++
		return nil // shares the target's inode and metadata
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		if err := st.mknod(rel, hdr); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: entry %q has unsupported tar type %q", ErrBadLayer, hdr.Name, hdr.Typeflag)
	}
	st.layer[rel] = true
	st.entries++
	return st.setMeta(rel, hdr)
}

func (st *stager) writeFile(rel string, hdr *tar.Header, r io.Reader) error {
	if hdr.Size < 0 {
		return fmt.Errorf("%w: entry %q has negative size", ErrBadLayer, hdr.Name)
	}
	if st.content+hdr.Size > st.maxContent {
		return fmt.Errorf("%w: content exceeds the cap of %d MiB at /%s (%d bytes)", ErrTooLarge, st.maxContent>>20, rel, hdr.Size)
	}
	f, err := st.root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return rootErr("creating file", rel, err)
	}
	n, err := io.Copy(f, r)
	st.content += n
	if err != nil {
		f.Close()
		return fmt.Errorf("%w: reading /%s: %v", ErrBadLayer, rel, err)
	}
	// File capabilities and other extended attributes travel as PAX
	// records; mkfs.ext4 -d copies them. Setting security.* needs root.
	if !st.deferOwners {
		for k, v := range hdr.PAXRecords {
			if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				if err := unix.Fsetxattr(int(f.Fd()), name, []byte(v), 0); err != nil {
					f.Close()
					return fmt.Errorf("setting xattr %s on /%s: %w", name, rel, err)
				}
			}
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing /%s: %w", rel, err)
	}
	st.blocks += (n + 4095) / 4096
	return nil
}

func (st *stager) mknod(rel string, hdr *tar.Header) error {
	mode := uint32(hdr.Mode & 0o7777)
	if hdr.Typeflag != tar.TypeFifo && st.deferOwners {
		// Only root may create device nodes; debugfs makes them later.
		typ := byte('c')
		if hdr.Typeflag == tar.TypeBlock {
			typ = 'b'
		}
		st.devices["/"+rel] = device{typ: typ, major: uint32(hdr.Devmajor), minor: uint32(hdr.Devminor), mode: mode, owner: owner{hdr.Uid, hdr.Gid}}
		return nil
	}
	d, err := st.root.OpenFile(path.Dir(rel), os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return rootErr("opening directory of", rel, err)
	}
	defer d.Close()
	kind := uint32(unix.S_IFIFO)
	switch hdr.Typeflag {
	case tar.TypeChar:
		kind = unix.S_IFCHR
	case tar.TypeBlock:
		kind = unix.S_IFBLK
	}
	dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
	if err := unix.Mknodat(int(d.Fd()), path.Base(rel), kind|mode, int(dev)); err != nil {
		return fmt.Errorf("creating device node /%s: %w", rel, err)
	}
	return nil
}

// setMeta applies owner, mode and times. Owner first: chown clears the
// setuid and setgid bits.
func (st *stager) setMeta(rel string, hdr *tar.Header) error {
	if _, isDev := st.devices["/"+rel]; isDev {
		return nil
	}
	if st.deferOwners {
		st.owners["/"+rel] = owner{hdr.Uid, hdr.Gid}
	} else if err := st.root.Lchown(rel, hdr.Uid, hdr.Gid); err != nil {
		return rootErr("setting owner of", rel, err)
	}
	if hdr.Typeflag == tar.TypeSymlink {
		return nil // Linux ignores symlink modes; chmod would follow it
	}
	mode := tarMode(hdr.Mode)
	if st.deferOwners {
		need, kind := os.FileMode(0o600), uint32(0o100000) // S_IFREG
		switch hdr.Typeflag {
		case tar.TypeDir:
			need, kind = 0o700, 0o040000 // S_IFDIR
		case tar.TypeFifo:
			need, kind = 0, 0o010000 // S_IFIFO
		}
		if mode&need != need {
			st.modes["/"+rel] = kind | uint32(hdr.Mode&0o7777)
			mode |= need
		} else {
			delete(st.modes, "/"+rel)
		}
	}
	if err := st.root.Chmod(rel, mode); err != nil {
		return rootErr("setting mode of", rel, err)
	}
	if !hdr.ModTime.IsZero() {
		if err := st.root.Chtimes(rel, hdr.ModTime, hdr.ModTime); err != nil {
			return rootErr("setting times of", rel, err)
		}
	}
	return nil
}

// tarMode converts tar's Unix mode bits to an os.FileMode for Chmod.
func tarMode(m int64) os.FileMode {
	fm := os.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		fm |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		fm |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		fm |= os.ModeSticky
	}
	return fm
}

// remove deletes rel and everything under it, and forgets recorded owners.
func (st *stager) remove(rel string) error {
	if rel == "." {
		return fmt.Errorf("%w: a whiteout would remove the root", ErrUnsafePath)
	}
	if err := st.root.RemoveAll(rel); err != nil {
		return rootErr("removing", rel, err)
	}
	p := "/" + rel
	for k := range st.owners {
		if k == p || strings.HasPrefix(k, p+"/") {
			delete(st.owners, k)
		}
	}
	for k := range st.devices {
		if k == p || strings.HasPrefix(k, p+"/") {
			delete(st.devices, k)
		}
	}
	for k := range st.modes {
		if k == p || strings.HasPrefix(k, p+"/") {
			delete(st.modes, k)
		}
	}
	return nil
}

// opaque empties dir of everything lower layers put there (an opaque
// whiteout), keeping what the current layer wrote.
func (st *stager) opaque(dir string) error {
	d, err := st.root.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return rootErr("opening", dir, err)
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return fmt.Errorf("listing /%s: %w", dir, err)
	}
	sort.Strings(names)
	for _, n := range names {
		p := path.Join(dir, n)
		if !st.layer[p] {
			if err := st.remove(p); err != nil {
				return err
			}
		}
	}
	return nil
}

// estimatedSize is a conservative guess of the ext4 image size the staged
// tree needs on a disk of diskSize: data blocks, inode tables (one 256-byte
// inode per 16 KiB, mke2fs's default), the journal and slack.
func (st *stager) estimatedSize(diskSize int64) int64 {
	return st.blocks*4096 + diskSize/64 + journalSize(diskSize) + 2<<20
}

// journalSize mirrors ext2fs_default_journal_size for 4 KiB blocks.
func journalSize(diskSize int64) int64 {
	blocks := diskSize / 4096
	switch {
	case blocks < 2048:
		return 0
	case blocks < 32768:
		return 4 << 20
	case blocks < 256*1024:
		return 16 << 20
	case blocks < 512*1024:
		return 32 << 20
	case blocks < 4096*1024:
		return 64 << 20
	}
	return 128 << 20
}
