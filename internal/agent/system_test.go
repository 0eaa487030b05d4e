package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/testenv"
)

// ioc is the kernel's _IOC (asm-generic/ioctl.h).
func ioc(dir, typ, nr, size uint) uint {
	return dir<<30 | size<<16 | typ<<8 | nr
}

func TestIoctlNumbers(t *testing.T) {
	const iocWrite, iocNone = 1, 0
	tests := []struct {
		name string
		got  uint
		want uint
	}{
		// linux/random.h: #define RNDADDENTROPY _IOW('R', 0x03, int [2])
		{"RNDADDENTROPY", unix.RNDADDENTROPY, ioc(iocWrite, 'R', 0x03, 8)},
		// linux/random.h: #define RNDRESEEDCRNG _IO('R', 0x07)
		{"RNDRESEEDCRNG", unix.RNDRESEEDCRNG, ioc(iocNone, 'R', 0x07, 0)},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %#x, want %#x", tt.name, tt.got, tt.want)
		}
	}
}

func TestRandPoolInfo(t *testing.T) {
	b := randPoolInfo([]byte{1, 2, 3, 4, 5})
	if len(b) != 8+8 {
		t.Fatalf("got %d bytes, want 16 (header + 5 bytes rounded up to u32 words)", len(b))
	}
	if bits, size := binary.NativeEndian.Uint32(b[0:]), binary.NativeEndian.Uint32(b[4:]); bits != 40 || size != 5 {
		t.Errorf("got entropy_count %d buf_size %d, want 40 and 5", bits, size)
	}
	if string(b[8:13]) != "\x01\x02\x03\x04\x05" {
		t.Errorf("got payload %x", b[8:])
	}
}

func TestSiginfoLayout(t *testing.T) {
	if got := unsafe.Sizeof(unix.Siginfo{}); got != sizeofSiginfo {
		t.Errorf("unix.Siginfo is %d bytes, want %d", got, sizeofSiginfo)
	}
}

// TestAddEntropy runs the real ioctls: adding bytes to the pool and reseeding
// only ever adds randomness, so it is safe on the test host.
func TestAddEntropy(t *testing.T) {
	testenv.RequireRoot(t)
	b := make([]byte, 64)
	for i := range b {
		b[i] = byte(i * 7)
	}
	if err := (HostSystem{}).AddEntropy(b); err != nil {
		t.Fatalf("AddEntropy: %v", err)
	}
}

// TestSetHostname sets the hostname for real, in a child process in a new
// UTS namespace, so the test host's name never changes.
func TestSetHostname(t *testing.T) {
	if os.Getenv("THAW_AGENT_TEST_HOSTNAME") == "1" {
		if err := (HostSystem{}).SetHostname("thaw-uts-test"); err != nil {
			os.Stdout.WriteString("error: " + err.Error())
			os.Exit(1)
		}
		h, _ := HostSystem{}.Hostname()
		os.Stdout.WriteString(h)
		os.Exit(0)
	}
	testenv.RequireRoot(t)
	before, _ := os.Hostname()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSetHostname$")
	cmd.Env = append(os.Environ(), "THAW_AGENT_TEST_HOSTNAME=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUTS}
	out, err := cmd.Output()
	if err != nil || strings.TrimSpace(string(out)) != "thaw-uts-test" {
		t.Errorf("child in a new UTS namespace: got %q, %v; want hostname thaw-uts-test", out, err)
	}
	if after, _ := os.Hostname(); after != before {
		t.Fatalf("the host's hostname changed from %q to %q", before, after)
	}
}

// TestListenVsock binds a real AF_VSOCK port. This host has no vsock
// loopback transport, so connections are tested inside a VM (e2e); here the
// listener must bind, report its address and end Accept with net.ErrClosed
// when closed, which is what stops the server's accept loop.
func TestListenVsock(t *testing.T) {
	ln, err := ListenVsock(0xfffe1234)
	if err != nil {
		if errors.Is(err, unix.EAFNOSUPPORT) {
			testenv.Missing(t, fmt.Sprintf("no AF_VSOCK in this kernel: %v", err))
		}
		t.Fatal(err)
	}
	if got := ln.Addr().String(); got != "4294967295:4294840884" {
		t.Errorf("Addr() = %s, want 4294967295:4294840884 (any CID)", got)
	}
	accepted := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		accepted <- err
	}()
	time.Sleep(50 * time.Millisecond)
	ln.Close()
	select {
	case err := <-accepted:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept after Close: got %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept still blocked 10s after Close")
	}
}
