// Command mktemplate is the main job's stand-in for `thaw template build`
// until thawd builds templates from images (issue 7): it boots an image that
// has thaw-agent as init under a VMM driven only through the Firecracker
// API, waits until the agent answers over vsock, pauses the VM and takes a
// Full snapshot, so that `thaw template register` can publish it.
//
//	mktemplate -vmm thaw-vmm -kernel vmlinux -rootfs debian.ext4 -dir DIR [-vcpus 1] [-memory-mib 256]
//
// DIR (new or empty, on the same filesystem as thawd's data directory, so
// the copies are reflinks) receives rootfs.ext4 (the VM's disk, recorded in
// the snapshot by that relative name, as thawd's sandboxes expect), vmstate,
// memory and vmm.log. It prints its timings as it goes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/agentapi"
	"github.com/thawvm/thaw/internal/fcapi"
)

// bootArgs: serial console, a reboot ends the VMM, no PCI probing (devices
// are virtio-mmio, declared on the command line by the VMM), the disk as
// root, quiet so the console does not slow the boot.
const bootArgs = "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw quiet"

type config struct {
	vmm, kernel, rootfs, dir string
	vcpus, memMiB            int
	readyTimeout             time.Duration
}

func main() {
	var c config
	flag.StringVar(&c.vmm, "vmm", "thaw-vmm", "VMM binary (thaw-vmm or firecracker)")
	flag.StringVar(&c.kernel, "kernel", "", "guest kernel (vmlinux; required)")
	flag.StringVar(&c.rootfs, "rootfs", "", "root disk image with thaw-agent as init (required)")
	flag.StringVar(&c.dir, "dir", "", "new or empty output directory (required)")
	flag.IntVar(&c.vcpus, "vcpus", 1, "vCPUs")
	flag.IntVar(&c.memMiB, "memory-mib", 256, "guest memory in MiB")
	flag.DurationVar(&c.readyTimeout, "ready-timeout", 3*time.Minute, "how long the agent may take to answer after the start")
	flag.Parse()
	if err := c.validate(); err != nil {
		fmt.Fprintf(os.Stderr, "mktemplate: %v\n", err)
		flag.Usage()
		os.Exit(2)
	}
	if err := run(context.Background(), c); err != nil {
		fmt.Fprintf(os.Stderr, "mktemplate: %v\n", err)
		os.Exit(1)
	}
}

func (c config) validate() error {
	switch {
	case flag.NArg() > 0:
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	case c.kernel == "" || c.rootfs == "" || c.dir == "":
		return errors.New("-kernel, -rootfs and -dir are required")
	case c.vcpus < 1 || c.vcpus > 32:
		return fmt.Errorf("-vcpus %d: want 1 to 32", c.vcpus)
	case c.memMiB < 64:
		return fmt.Errorf("-memory-mib %d: want at least 64", c.memMiB)
	case c.readyTimeout <= 0:
		return fmt.Errorf("-ready-timeout %v: want a positive duration", c.readyTimeout)
	}
	return nil
}

func run(ctx context.Context, c config) error {
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return err
	}
	if entries, err := os.ReadDir(c.dir); err != nil {
		return err
	} else if len(entries) > 0 {
		return fmt.Errorf("output directory %s is not empty: give a new or empty one", c.dir)
	}
	kernel, err := filepath.Abs(c.kernel)
	if err != nil {
		return err
	}
	start := time.Now()
	// The VM writes to its disk: it gets a copy (a reflink on XFS/btrfs).
	if err := copySparse(c.rootfs, filepath.Join(c.dir, "rootfs.ext4")); err != nil {
		return err
	}
	copied := time.Since(start)

	logPath := filepath.Join(c.dir, "vmm.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	sock := filepath.Join(c.dir, "api.sock")
	cmd := exec.Command(c.vmm, "--api-sock", sock, "--id", "mktemplate")
	cmd.Dir = c.dir // the drive's and vsock's relative paths resolve here
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", c.vmm, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
		os.Remove(sock)
		os.Remove(filepath.Join(c.dir, "vsock.sock"))
	}()
	fail := func(step string, err error) error {
		return fmt.Errorf("%s: %w\nlast lines of %s:\n%s", step, err, logPath, tail(logPath, 30))
	}

	fc := fcapi.NewClient(sock)
	defer fc.Close()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := fc.WaitReady(wctx); err != nil {
		return fail("waiting for the VMM's API", err)
	}
	steps := []struct {
		name string
		do   func() error
	}{
		{"PUT /boot-source", func() error {
			return fc.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: kernel, BootArgs: bootArgs})
		}},
		{"PUT /machine-config", func() error {
			return fc.PutMachineConfig(ctx, fcapi.MachineConfig{VcpuCount: c.vcpus, MemSizeMib: c.memMiB})
		}},
		{"PUT /drives/rootfs", func() error {
			return fc.PutDrive(ctx, fcapi.Drive{DriveID: "rootfs", PathOnHost: "rootfs.ext4", IsRootDevice: true})
		}},
		{"PUT /vsock", func() error {
			return fc.PutVsock(ctx, fcapi.Vsock{GuestCID: 3, UDSPath: "vsock.sock"})
		}},
		{"InstanceStart", func() error { return fc.InstanceStart(ctx) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fail(s.name, err)
		}
	}
	booted := time.Now()

	ac := agentapi.NewClient(agentapi.VsockDialer(filepath.Join(c.dir, "vsock.sock"), agentapi.DefaultVsockPort))
	rctx, rcancel := context.WithTimeout(ctx, c.readyTimeout)
	h, err := ac.WaitReady(rctx, 200*time.Millisecond)
	rcancel()
	ac.Close() // no live connection may go into the snapshot
	if err != nil {
		select {
		case werr := <-exited:
			exited <- werr
			return fail("waiting for the agent", fmt.Errorf("%w (the VMM exited: %v)", err, werr))
		default:
		}
		return fail("waiting for the agent", err)
	}
	fmt.Printf("mktemplate: disk copy %v, boot to agent ready %v (agent protocol %d)\n",
		copied.Round(time.Millisecond), time.Since(booted).Round(time.Millisecond), h.Protocol)

	t := time.Now()
	if err := fc.Pause(ctx); err != nil {
		return fail("pausing", err)
	}
	if err := fc.CreateSnapshot(ctx, fcapi.SnapshotCreateParams{SnapshotType: fcapi.SnapshotFull,
		SnapshotPath: filepath.Join(c.dir, "vmstate"), MemFilePath: filepath.Join(c.dir, "memory")}); err != nil {
		return fail("PUT /snapshot/create", err)
	}
	fmt.Printf("mktemplate: pause + snapshot %v\n", time.Since(t).Round(time.Millisecond))
	return nil
}

// copySparse copies the file src to the new file dst: a reflink where the
// filesystem makes one, else a copy that leaves all-zero blocks as holes
// (images are mostly holes; busybox's cp in L1 cannot do either).
func copySparse(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		return nil
	}
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	// Only the source's data extents are read (SEEK_DATA/SEEK_HOLE; a
	// filesystem without them reports one extent, the whole file), and
	// all-zero blocks inside them are not written.
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		start, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		} else if err != nil {
			return fmt.Errorf("copying %s: finding data: %w", src, err)
		}
		end, err := unix.Seek(int(in.Fd()), start, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("copying %s: finding a hole: %w", src, err)
		}
		for pos := start; pos < end; {
			n, err := in.ReadAt(buf[:min(int64(len(buf)), end-pos)], pos)
			if err != nil && !(errors.Is(err, io.EOF) && n > 0) {
				return fmt.Errorf("copying %s: %w", src, err)
			}
			for b := 0; b < n; b += 4096 {
				blk := buf[b:min(b+4096, n)]
				if !allZero(blk) {
					if _, err := out.WriteAt(blk, pos+int64(b)); err != nil {
						return fmt.Errorf("copying %s to %s: %w", src, dst, err)
					}
				}
			}
			pos += int64(n)
		}
		off = end
	}
	if err := out.Truncate(size); err != nil {
		return fmt.Errorf("copying %s to %s: %w", src, dst, err)
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// tail is the last n lines of the file at path, for error messages.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
