package agentapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// VsockHandshakeTimeout bounds the CONNECT/OK exchange of DialVsockUDS when
// the context has no earlier deadline.
const VsockHandshakeTimeout = 5 * time.Second

// maxHandshakeLine caps the VMM's reply line ("OK 1073741824\n" is 14 bytes).
const maxHandshakeLine = 64

// DialVsockUDS connects to a guest vsock port through a Firecracker-style
// host-side vsock unix socket: it connects to udsPath, writes
// "CONNECT <port>\n" and expects "OK <hostport>\n" back, after which the
// connection is a byte stream to the guest. The exchange is bounded by ctx and
// VsockHandshakeTimeout. A VMM closes the connection when nothing listens on
// the guest port; that and any other reply are returned as clear errors.
func DialVsockUDS(ctx context.Context, udsPath string, port uint32) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", udsPath)
	if err != nil {
		return nil, Errorf(KindUnavailable, "connecting to vsock socket %s: %v", udsPath, err)
	}
	if err := vsockHandshake(ctx, conn, port); err != nil {
		conn.Close()
		return nil, fmt.Errorf("vsock handshake on %s for guest port %d: %w", udsPath, port, err)
	}
	return conn, nil
}

func vsockHandshake(ctx context.Context, conn net.Conn, port uint32) error {
	deadline := time.Now().Add(VsockHandshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return err
	}
	// Cancelling ctx unblocks the exchange by moving the deadline to now.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		if err := timeoutErr(ctx, err); err != nil {
			return err
		}
		return Errorf(KindUnavailable, "writing CONNECT: %v", err)
	}
	// Read byte by byte: whatever follows the newline belongs to the stream.
	line := make([]byte, 0, 32)
	var b [1]byte
	for {
		if _, err := conn.Read(b[:]); err != nil {
			if err := timeoutErr(ctx, err); err != nil {
				return err
			}
			if len(line) == 0 {
				return Errorf(KindUnavailable, "the VMM closed the connection without a reply (%v): is the agent listening on guest port %d?", err, port)
			}
			return Errorf(KindUnavailable, "reading the reply after %q: %v", line, err)
		}
		if b[0] == '\n' {
			break
		}
		if len(line) == maxHandshakeLine {
			return Errorf(KindUnavailable, "reply %q... is longer than %d bytes: want \"OK <port>\"", line, maxHandshakeLine)
		}
		line = append(line, b[0])
	}
	if err := parseVsockOK(string(line)); err != nil {
		return err
	}
	stop()
	return conn.SetDeadline(time.Time{})
}

// timeoutErr explains an I/O error caused by the handshake's deadline: the
// context's own error when the context ended (its deadline can pass a moment
// before ctx.Err reports it), else VsockHandshakeTimeout. Other errors give
// nil.
func timeoutErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return Errorf(KindUnavailable, "no reply within %v", VsockHandshakeTimeout)
}

// parseVsockOK accepts "OK <port>" with a decimal port.
func parseVsockOK(line string) error {
	rest, ok := strings.CutPrefix(line, "OK ")
	if ok {
		if _, err := strconv.ParseUint(rest, 10, 32); err == nil {
			return nil
		}
	}
	return Errorf(KindUnavailable, "got reply %q, want \"OK <port>\"", line)
}
