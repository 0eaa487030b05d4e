package image

import (
	"archive/tar"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"
)

// checkAgent opens the agent binary and checks that it can run as PID 1 of
// an amd64 guest with nothing else installed: an x86-64 ELF executable
// without a dynamic loader.
func checkAgent(p string) (*os.File, error) {
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s does not exist (build it with CGO_ENABLED=0 go build -o %s ./cmd/thaw-agent)", ErrBadAgent, p, p)
		}
		return nil, fmt.Errorf("%w: %v", ErrBadAgent, err)
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrBadAgent, p)
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: %s is not an ELF executable: %v", ErrBadAgent, p, err)
	}
	defer ef.Close()
	if ef.Machine != elf.EM_X86_64 || ef.Class != elf.ELFCLASS64 {
		f.Close()
		return nil, fmt.Errorf("%w: %s is built for %v, the guest is x86-64 (GOARCH=amd64)", ErrBadAgent, p, ef.Machine)
	}
	for _, prog := range ef.Progs {
		if prog.Type == elf.PT_INTERP {
			f.Close()
			return nil, fmt.Errorf("%w: %s is dynamically linked; the guest may have no C library: build it with CGO_ENABLED=0", ErrBadAgent, p)
		}
	}
	return f, nil
}

// injectAgent installs the agent as /sbin/thaw-agent, points /sbin/init at
// it, and makes the mount points PID 1 needs.
func (st *stager) injectAgent(agent *os.File) error {
	sbin, err := st.resolveDir("sbin")
	if err != nil {
		return err
	}
	fi, err := agent.Stat()
	if err != nil {
		return err
	}
	if _, err := agent.Seek(0, io.SeekStart); err != nil {
		return err
	}
	now := time.Now()
	entries := []struct {
		hdr *tar.Header
		r   io.Reader
	}{
		{&tar.Header{Typeflag: tar.TypeReg, Name: path.Join(sbin, "thaw-agent"), Mode: 0o755, Size: fi.Size(), ModTime: now}, agent},
		{&tar.Header{Typeflag: tar.TypeSymlink, Name: path.Join(sbin, "init"), Linkname: "thaw-agent", ModTime: now}, nil},
	}
	// The content cap is for the source; the agent does not count.
	st.maxContent += fi.Size()
	for _, e := range entries {
		if err := st.applyEntry(e.hdr, e.r, false); err != nil {
			return fmt.Errorf("injecting the agent: %w", err)
		}
	}
	// Mount points PID 1 needs, and the two device nodes the kernel and
	// the agent need before devtmpfs is mounted: the kernel opens
	// /dev/console as init's stdin, stdout and stderr (without it the
	// agent's log is lost unless CONFIG_DEVTMPFS_MOUNT is set).
	for _, d := range []tar.Header{
		{Typeflag: tar.TypeDir, Name: "proc", Mode: 0o555},
		{Typeflag: tar.TypeDir, Name: "sys", Mode: 0o555},
		{Typeflag: tar.TypeDir, Name: "dev", Mode: 0o755},
		{Typeflag: tar.TypeDir, Name: "tmp", Mode: 0o1777},
		{Typeflag: tar.TypeDir, Name: "run", Mode: 0o755},
		{Typeflag: tar.TypeChar, Name: "dev/console", Mode: 0o600, Devmajor: 5, Devminor: 1},
		{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3},
	} {
		if _, err := st.root.Lstat(d.Name); err == nil {
			continue // the image's own, whatever it is
		}
		hdr := d
		hdr.ModTime = now
		if err := st.applyEntry(&hdr, nil, false); err != nil {
			return fmt.Errorf("creating /%s: %w", d.Name, err)
		}
	}
	return nil
}

// resolveDir returns the directory name should be written under, following
// a symlink at it chroot-style (usr-merged images have sbin -> usr/sbin;
// some have sbin -> /usr/sbin, which os.Root would refuse to follow).
func (st *stager) resolveDir(name string) (string, error) {
	for range 8 {
		fi, err := st.root.Lstat(name)
		if errors.Is(err, fs.ErrNotExist) {
			return name, nil
		}
		if err != nil {
			return "", rootErr("inspecting", name, err)
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			if !fi.IsDir() {
				return "", fmt.Errorf("/%s in the image is not a directory", name)
			}
			return name, nil
		}
		target, err := st.root.Readlink(name)
		if err != nil {
			return "", rootErr("reading link", name, err)
		}
		if !strings.HasPrefix(target, "/") {
			target = path.Join(path.Dir(name), target)
		}
		if name, err = cleanName(target); err != nil {
			return "", err
		}
	}
	return "", fmt.Errorf("%w: too many symlinks resolving /sbin", ErrUnsafePath)
}
