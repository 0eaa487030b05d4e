package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/test/linux/wire"
)

// disk mounts the ext4 drive /dev/vda, checks the host's file on it and
// writes guest.txt, which the host reads back with debugfs after shutdown.
func disk(seed uint64) error {
	if err := os.MkdirAll("/mnt", 0o755); err != nil {
		return err
	}
	if err := unix.Mount("/dev/vda", "/mnt", "ext4", 0, ""); err != nil {
		return fmt.Errorf("mounting /dev/vda (ext4) on /mnt: %w", err)
	}
	host, err := os.ReadFile("/mnt/host.bin")
	if err != nil {
		return err
	}
	sum := sha256.Sum256(host)
	f, err := os.Create("/mnt/guest.txt")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "seed=%d host.bin sha256=%x\n", seed, sum)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing /mnt/guest.txt: %w", err)
	}
	unix.Sync()
	if err := unix.Unmount("/mnt", 0); err != nil {
		return fmt.Errorf("unmounting /mnt: %w", err)
	}
	fmt.Printf("thaw-guestinit: disk ok host.bin sha256=%x\n", sum)
	return nil
}

// vsockFile wraps a blocking vsock socket descriptor.
func vsockFile(fd int, name string) *os.File { return os.NewFile(uintptr(fd), name) }

// listenVsock listens on wire.GuestPort and echoes every frame of every
// connection back, one connection at a time, forever.
func listenVsock() error {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("vsock socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: wire.GuestPort}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("binding vsock port %d: %w", wire.GuestPort, err)
	}
	if err := unix.Listen(fd, 8); err != nil {
		unix.Close(fd)
		return fmt.Errorf("listening on vsock port %d: %w", wire.GuestPort, err)
	}
	fmt.Printf("thaw-guestinit: vsock listening port=%d\n", wire.GuestPort)
	go func() {
		for {
			nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
			if err != nil {
				// A restore resets the transport; the listener survives.
				fmt.Printf("thaw-guestinit: vsock accept: %v\n", err)
				continue
			}
			c := vsockFile(nfd, "vsock-conn")
			for {
				b, err := wire.ReadFrame(c)
				if err != nil {
					break
				}
				if err := wire.WriteFrame(c, b); err != nil {
					break
				}
				fmt.Printf("thaw-guestinit: vsock echoed %d bytes\n", len(b))
			}
			c.Close()
		}
	}()
	return nil
}

// dialHost connects to the host's wire.HostPort, sends the pattern for
// seed and checks the SHA-256 the host answers.
func dialHost(seed uint64) error {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("vsock socket: %w", err)
	}
	c := vsockFile(fd, "vsock-out")
	defer c.Close()
	if err := unix.Connect(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_HOST, Port: wire.HostPort}); err != nil {
		return fmt.Errorf("connecting to the host's vsock port %d: %w", wire.HostPort, err)
	}
	p := wire.Pattern(seed, wire.PayloadSize)
	if err := wire.WriteFrame(c, p); err != nil {
		return err
	}
	got, err := wire.ReadFrame(c)
	if err != nil {
		return err
	}
	want := sha256.Sum256(p)
	if !bytes.Equal(got, want[:]) {
		return fmt.Errorf("the host saw SHA-256 %x of what the guest sent, want %x", got, want)
	}
	fmt.Printf("thaw-guestinit: vsock to host ok bytes=%d\n", len(p))
	return nil
}

func seedParam(cmdline string) (uint64, error) {
	s := param(cmdline, "thaw.seed")
	seed, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("thaw.seed=%q on the kernel command line: want a number", s)
	}
	return seed, nil
}
