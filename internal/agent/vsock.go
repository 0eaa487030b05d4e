package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// VsockAddr is an AF_VSOCK address.
type VsockAddr struct {
	CID  uint32
	Port uint32
}

// Network implements net.Addr.
func (a VsockAddr) Network() string { return "vsock" }

func (a VsockAddr) String() string {
	return strconv.FormatUint(uint64(a.CID), 10) + ":" + strconv.FormatUint(uint64(a.Port), 10)
}

// ListenVsock listens on an AF_VSOCK stream port for any CID: the guest side
// of Firecracker's vsock device. The standard library has no vsock support,
// so the socket is driven through *os.File and the runtime poller.
func ListenVsock(port uint32) (net.Listener, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("creating vsock socket: %w (does the kernel have CONFIG_VIRTIO_VSOCKETS?)", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("binding vsock port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 128); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listening on vsock port %d: %w", port, err)
	}
	return &vsockListener{f: os.NewFile(uintptr(fd), "vsock:"+strconv.Itoa(int(port))), addr: VsockAddr{CID: unix.VMADDR_CID_ANY, Port: port}}, nil
}

type vsockListener struct {
	f      *os.File
	addr   VsockAddr
	closed atomic.Bool
}

func (l *vsockListener) Accept() (net.Conn, error) {
	rc, err := l.f.SyscallConn()
	if err != nil {
		return nil, l.opErr(err)
	}
	var nfd int
	var sa unix.Sockaddr
	var aerr error
	err = rc.Read(func(fd uintptr) bool {
		nfd, sa, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		return !errors.Is(aerr, unix.EAGAIN)
	})
	if err != nil {
		return nil, l.opErr(err)
	}
	if aerr != nil {
		return nil, l.opErr(os.NewSyscallError("accept4", aerr))
	}
	remote := VsockAddr{}
	if vm, ok := sa.(*unix.SockaddrVM); ok {
		remote = VsockAddr{CID: vm.CID, Port: vm.Port}
	}
	return &vsockConn{File: os.NewFile(uintptr(nfd), "vsock-conn"), local: l.addr, remote: remote}, nil
}

// opErr reports a closed listener as net.ErrClosed, which is what ends
// accept loops.
func (l *vsockListener) opErr(err error) error {
	if l.closed.Load() {
		err = net.ErrClosed
	}
	return &net.OpError{Op: "accept", Net: "vsock", Addr: l.addr, Err: err}
}

func (l *vsockListener) Close() error {
	l.closed.Store(true)
	return l.f.Close()
}
func (l *vsockListener) Addr() net.Addr { return l.addr }

// vsockConn is an accepted vsock stream. *os.File gives it poller-driven
// reads and writes and deadlines.
type vsockConn struct {
	*os.File
	local, remote VsockAddr
}

func (c *vsockConn) LocalAddr() net.Addr  { return c.local }
func (c *vsockConn) RemoteAddr() net.Addr { return c.remote }

func (c *vsockConn) SetDeadline(t time.Time) error      { return c.File.SetDeadline(t) }
func (c *vsockConn) SetReadDeadline(t time.Time) error  { return c.File.SetReadDeadline(t) }
func (c *vsockConn) SetWriteDeadline(t time.Time) error { return c.File.SetWriteDeadline(t) }
