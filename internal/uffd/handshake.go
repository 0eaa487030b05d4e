package uffd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// MaxHandshakeBytes caps the handshake message. A region costs about 120
// bytes of JSON, so MaxRegions fit with room to spare.
const MaxHandshakeBytes = 1 << 20

// wireRegion is one element of the handshake's JSON array, as Firecracker
// writes it. Pointers tell a missing field from a zero one.
type wireRegion struct {
	BaseHostVirtAddr *uint64 `json:"base_host_virt_addr"`
	Size             *uint64 `json:"size"`
	Offset           *uint64 `json:"offset"`
	PageSize         *uint64 `json:"page_size"`
	PageSizeKib      *uint64 `json:"page_size_kib"` // bytes despite the name (Firecracker's)
}

// ParseHandshake decodes and validates the JSON message of a Firecracker UFFD
// handshake: an array of {"base_host_virt_addr","size","offset","page_size",
// "page_size_kib"}. Both page-size fields are in bytes; a sender that omits
// both means 4 KiB, one that sends both must send the same value. Unknown
// fields are ignored so that newer senders still work. The regions are
// checked with ValidateRegions.
func ParseHandshake(msg []byte) ([]Region, error) {
	trimmed := bytes.TrimSpace(msg)
	if len(trimmed) == 0 {
		return nil, fmt.Errorf("handshake message is empty: want a JSON array of memory regions")
	}
	if trimmed[0] != '[' {
		return nil, fmt.Errorf("handshake message starts with %q: want a JSON array of memory regions", quoteStart(trimmed))
	}
	var wire []wireRegion
	if err := json.Unmarshal(trimmed, &wire); err != nil {
		return nil, fmt.Errorf("decoding handshake JSON %q: %w", quoteStart(trimmed), err)
	}
	regions := make([]Region, 0, len(wire))
	for i, w := range wire {
		var missing []string
		if w.BaseHostVirtAddr == nil {
			missing = append(missing, "base_host_virt_addr")
		}
		if w.Size == nil {
			missing = append(missing, "size")
		}
		if w.Offset == nil {
			missing = append(missing, "offset")
		}
		if len(missing) > 0 {
			return nil, fmt.Errorf("handshake region %d lacks %s", i, strings.Join(missing, ", "))
		}
		ps := uint64(PageSize4K)
		switch {
		case w.PageSize != nil && w.PageSizeKib != nil && *w.PageSize != *w.PageSizeKib:
			return nil, fmt.Errorf("handshake region %d: page_size %d and page_size_kib %d disagree (both are bytes)", i, *w.PageSize, *w.PageSizeKib)
		case w.PageSize != nil:
			ps = *w.PageSize
		case w.PageSizeKib != nil:
			ps = *w.PageSizeKib
		}
		regions = append(regions, Region{BaseHostVirtAddr: *w.BaseHostVirtAddr, Size: *w.Size, Offset: *w.Offset, PageSize: ps})
	}
	if err := ValidateRegions(regions); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	return regions, nil
}

func quoteStart(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "..."
	}
	return string(b)
}

// MarshalHandshake encodes regions exactly as Firecracker v1.14 does, for
// example
// [{"base_host_virt_addr":140019538853888,"size":134217728,"offset":0,"page_size":4096,"page_size_kib":4096}].
func MarshalHandshake(regions []Region) []byte {
	b := []byte{'['}
	for i, r := range regions {
		if i > 0 {
			b = append(b, ',')
		}
		b = fmt.Appendf(b, `{"base_host_virt_addr":%d,"size":%d,"offset":%d,"page_size":%d,"page_size_kib":%d}`,
			r.BaseHostVirtAddr, r.Size, r.Offset, r.PageSize, r.PageSize)
	}
	return append(b, ']')
}

// SendHandshake is the VMM's side of the handshake: it sends regions as one
// JSON message with uffd attached in SCM_RIGHTS over conn. It validates the
// regions first so that a VMM bug shows up here, not as a page-server error.
// The caller keeps ownership of conn and uffd.
func SendHandshake(conn *net.UnixConn, regions []Region, uffd *os.File) error {
	if err := ValidateRegions(regions); err != nil {
		return fmt.Errorf("sending handshake: %w", err)
	}
	msg := MarshalHandshake(regions)
	rc, err := uffd.SyscallConn()
	if err != nil {
		return fmt.Errorf("sending handshake: %w", err)
	}
	// The fd is used inside Control, never through uffd.Fd(), which would
	// switch the shared file description to blocking mode.
	var werr error
	if err := rc.Control(func(fd uintptr) {
		var n, oobn int
		n, oobn, werr = conn.WriteMsgUnix(msg, unix.UnixRights(int(fd)), nil)
		if werr == nil && oobn == 0 {
			werr = fmt.Errorf("the userfaultfd was not sent (%d bytes written)", n)
		}
		if werr == nil && n < len(msg) {
			// A message larger than the socket buffer goes out in pieces;
			// the receiver reads until the JSON is complete.
			_, werr = conn.Write(msg[n:])
		}
	}); err != nil {
		return fmt.Errorf("sending handshake: %w", err)
	}
	if werr != nil {
		return fmt.Errorf("sending handshake to %s: %w", conn.RemoteAddr(), werr)
	}
	return nil
}

// SendHandshakeTo connects to the page server listening on path and sends
// the handshake (see SendHandshake). The connection is closed afterwards,
// as Firecracker does.
func SendHandshakeTo(ctx context.Context, path string, regions []Region, uffd *os.File) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return fmt.Errorf("connecting to page server: %w", err)
	}
	defer c.Close()
	return SendHandshake(c.(*net.UnixConn), regions, uffd)
}

// Handshake is what a page server received from a VMM. It owns Uffd and the
// peer's pidfd until Close (NewServer takes both over).
type Handshake struct {
	Regions []Region
	// Uffd is the VMM's userfaultfd, non-blocking and close-on-exec.
	Uffd *os.File
	// PeerPID is the sender's pid (SO_PEERCRED), 0 if unknown.
	PeerPID int
	// peer is a pidfd for the sender that becomes readable when it exits;
	// nil when the kernel could not give one.
	peer *os.File
}

// Close releases the handshake's file descriptors.
func (h *Handshake) Close() error {
	var errs []error
	if h.Uffd != nil {
		errs = append(errs, h.Uffd.Close())
		h.Uffd = nil
	}
	if h.peer != nil {
		errs = append(errs, h.peer.Close())
		h.peer = nil
	}
	return errors.Join(errs...)
}

// Listener is a page server's unix socket. Bind it before starting the VMM
// so that the VMM's connect cannot race the bind.
type Listener struct {
	l    *net.UnixListener
	path string
}

// Listen binds a unix socket at path for the VMM to send its handshake to.
// The socket file is removed on Close.
func Listen(path string) (*Listener, error) {
	if path == "" {
		return nil, fmt.Errorf("listening for the UFFD handshake: empty socket path")
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		if errors.Is(err, unix.EADDRINUSE) {
			return nil, fmt.Errorf("listening for the UFFD handshake on %s: %w (remove the stale socket if no page server uses it)", path, err)
		}
		return nil, fmt.Errorf("listening for the UFFD handshake on %s: %w", path, err)
	}
	l.SetUnlinkOnClose(true)
	return &Listener{l: l, path: path}, nil
}

// Path returns the socket path.
func (l *Listener) Path() string { return l.path }

// Close stops listening and removes the socket file.
func (l *Listener) Close() error { return l.l.Close() }

// Accept waits for one VMM to connect and reads its handshake. It returns
// when the handshake is complete, when it is rejected (the error names what
// was wrong), or when ctx is done (its deadline bounds the whole exchange
// and its cancellation wakes a blocked accept or read).
func (l *Listener) Accept(ctx context.Context) (*Handshake, error) {
	var conn *net.UnixConn
	err := withDeadline(ctx, l.l, func() error {
		c, err := l.l.AcceptUnix()
		conn = c
		return err
	})
	if err != nil {
		if cerr := ctxErr(ctx, err); cerr != nil {
			return nil, fmt.Errorf("waiting for the VMM to connect to %s: %w", l.path, cerr)
		}
		return nil, fmt.Errorf("accepting on %s: %w", l.path, err)
	}
	defer conn.Close()
	var h *Handshake
	err = withDeadline(ctx, conn, func() error {
		var err error
		h, err = readHandshake(conn)
		return err
	})
	if err != nil {
		if cerr := ctxErr(ctx, err); cerr != nil {
			err = cerr
		}
		return nil, fmt.Errorf("reading the UFFD handshake on %s: %w", l.path, err)
	}
	return h, nil
}

// ctxErr returns ctx's error when err came from ctx ending: cancelled, or
// its deadline (copied onto the socket) passed, possibly a moment before
// ctx's own timer noticed.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if dl, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	return nil
}

type deadliner interface{ SetDeadline(time.Time) error }

// withDeadline runs op with d's deadline set from ctx, and a watchdog that
// expires the deadline when ctx is cancelled, waking a blocked op. It
// returns only after the watchdog has finished, so a later call never sees
// a deadline set on behalf of this one.
func withDeadline(ctx context.Context, d deadliner, op func() error) error {
	dl, _ := ctx.Deadline()
	if err := d.SetDeadline(dl); err != nil {
		return err
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		d.SetDeadline(time.Unix(1, 0))
	})
	err := op()
	if !stop() {
		<-fired
	}
	return err
}

// readHandshake reads one handshake message and its file descriptors from
// conn. Because the socket is a byte stream, the JSON may arrive in pieces:
// it reads until the bytes form a complete JSON array, the peer closes, or
// MaxHandshakeBytes is exceeded.
func readHandshake(conn *net.UnixConn) (h *Handshake, err error) {
	var fds []int
	defer func() {
		if err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
	}()
	var msg []byte
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*8))
	for {
		n, oobn, flags, _, rerr := conn.ReadMsgUnix(buf, oob)
		n, oobn = max(n, 0), max(oobn, 0)
		if oobn > 0 {
			got, perr := parseRights(oob[:oobn])
			fds = append(fds, got...)
			if perr != nil {
				return nil, perr
			}
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return nil, fmt.Errorf("handshake carried more file descriptors than fit (at least %d); want exactly 1, the userfaultfd", len(fds)+1)
		}
		msg = append(msg, buf[:n]...)
		if len(msg) > MaxHandshakeBytes {
			return nil, fmt.Errorf("handshake message exceeds %d bytes", MaxHandshakeBytes)
		}
		t := bytes.TrimSpace(msg)
		if len(t) > 0 && t[0] != '[' {
			break // ParseHandshake names the problem
		}
		if len(t) > 0 && json.Valid(t) {
			break
		}
		if errors.Is(rerr, io.EOF) || (rerr == nil && n == 0) {
			if len(t) == 0 {
				return nil, fmt.Errorf("the VMM closed the connection without sending a handshake message")
			}
			break // incomplete JSON: ParseHandshake names the problem
		}
		if rerr != nil {
			return nil, fmt.Errorf("after %d bytes: %w", len(msg), rerr)
		}
	}
	regions, err := ParseHandshake(msg)
	if err != nil {
		return nil, err
	}
	switch len(fds) {
	case 0:
		return nil, fmt.Errorf("handshake carried no file descriptor: the VMM must send its userfaultfd in SCM_RIGHTS")
	case 1:
	default:
		return nil, fmt.Errorf("handshake carried %d file descriptors, want exactly 1 (the userfaultfd)", len(fds))
	}
	if err := checkIsUffd(fds[0]); err != nil {
		return nil, err
	}
	// The page server's reads must not block, and the kernel refuses to poll
	// a blocking userfaultfd.
	if err := unix.SetNonblock(fds[0], true); err != nil {
		return nil, fmt.Errorf("making the userfaultfd non-blocking: %w", err)
	}
	h = &Handshake{Regions: regions}
	if err := peerIdentity(conn, h); err != nil {
		return nil, err
	}
	h.Uffd = os.NewFile(uintptr(fds[0]), "userfaultfd")
	return h, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parsing handshake control message: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			return fds, fmt.Errorf("parsing SCM_RIGHTS: %w", err)
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

// checkIsUffd rejects a descriptor that is not a userfaultfd, such as a
// VMM sending its memory file by mistake.
func checkIsUffd(fd int) error {
	target, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return fmt.Errorf("inspecting the handshake's file descriptor: %w", err)
	}
	if target != "anon_inode:[userfaultfd]" {
		return fmt.Errorf("handshake carried %q, not a userfaultfd", target)
	}
	return nil
}

// peerIdentity records the sender's pid and a pidfd for it, used to notice
// the VMM exiting. SO_PEERPIDFD (Linux 6.5+) names the very process that
// connected; older kernels fall back to pidfd_open on the SO_PEERCRED pid.
func peerIdentity(conn *net.UnixConn, h *Handshake) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("reading peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	pidfd := -1
	if err := rc.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if p, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD); err == nil {
			pidfd = p
		}
	}); err != nil {
		return fmt.Errorf("reading peer credentials: %w", err)
	}
	if credErr != nil {
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
		return fmt.Errorf("reading peer credentials (SO_PEERCRED): %w", credErr)
	}
	h.PeerPID = int(cred.Pid)
	if pidfd < 0 && h.PeerPID > 0 {
		if p, err := unix.PidfdOpen(h.PeerPID, 0); err == nil {
			pidfd = p
		}
	}
	if pidfd >= 0 {
		unix.CloseOnExec(pidfd)
		h.peer = os.NewFile(uintptr(pidfd), "pidfd")
	}
	return nil
}
