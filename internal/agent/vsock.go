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
	return newFileListener(fd, VsockAddr{CID: unix.VMADDR_CID_ANY, Port: port}), nil
}

// fileListener accepts on a listening, non-blocking socket of any family
// through *os.File, for families the net package does not know (vsock).
// It takes ownership of fd.
type fileListener struct {
	f      *os.File
	addr   net.Addr
	closed atomic.Bool
}

func newFileListener(fd int, addr net.Addr) *fileListener {
	return &fileListener{f: os.NewFile(uintptr(fd), addr.Network()+":"+addr.String()), addr: addr}
}

func (l *fileListener) Accept() (net.Conn, error) {
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
	var remote net.Addr = sockAddr{network: l.addr.Network()}
	if vm, ok := sa.(*unix.SockaddrVM); ok {
		remote = VsockAddr{CID: vm.CID, Port: vm.Port}
	}
	return &fileConn{File: os.NewFile(uintptr(nfd), "conn:"+remote.String()), local: l.addr, remote: remote}, nil
}

// opErr reports a closed listener as net.ErrClosed, which is what ends
// accept loops.
func (l *fileListener) opErr(err error) error {
	if l.closed.Load() {
		err = net.ErrClosed
	}
	return &net.OpError{Op: "accept", Net: l.addr.Network(), Addr: l.addr, Err: err}
}

func (l *fileListener) Close() error {
	l.closed.Store(true)
	return l.f.Close()
}

func (l *fileListener) Addr() net.Addr { return l.addr }

// sockAddr names a peer the agent has no better description of.
type sockAddr struct{ network string }

func (a sockAddr) Network() string { return a.network }
func (a sockAddr) String() string  { return "peer" }

// fileConn is an accepted stream socket. *os.File gives it poller-driven
// reads and writes, deadlines and SyscallConn.
type fileConn struct {
	*os.File
	local, remote net.Addr
}

func (c *fileConn) LocalAddr() net.Addr  { return c.local }
func (c *fileConn) RemoteAddr() net.Addr { return c.remote }

func (c *fileConn) SetDeadline(t time.Time) error      { return c.File.SetDeadline(t) }
func (c *fileConn) SetReadDeadline(t time.Time) error  { return c.File.SetReadDeadline(t) }
func (c *fileConn) SetWriteDeadline(t time.Time) error { return c.File.SetWriteDeadline(t) }
