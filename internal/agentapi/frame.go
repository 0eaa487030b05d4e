package agentapi

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
)

// FrameType says what a frame of an upgraded exec connection carries.
//
// A frame is a 5-byte header, the type and the payload length as a big-endian
// uint32, followed by the payload. Payloads are at most MaxFramePayload bytes;
// longer writes are split.
type FrameType byte

// Frame types. Stdin, StdinClose and Signal flow from client to agent;
// Stdout, Stderr, Exit and Error from agent to client. Exit is the last frame
// the agent sends; it then closes the connection.
const (
	FrameStdin      FrameType = 1 // bytes for the process's stdin
	FrameStdinClose FrameType = 2 // no payload: close the process's stdin
	FrameSignal     FrameType = 3 // signal name or number, ASCII
	FrameStdout     FrameType = 4 // bytes the process wrote to stdout
	FrameStderr     FrameType = 5 // bytes the process wrote to stderr
	FrameExit       FrameType = 6 // JSON ExitStatus
	FrameError      FrameType = 7 // JSON Error: the agent lost the process
)

func (t FrameType) String() string {
	switch t {
	case FrameStdin:
		return "stdin"
	case FrameStdinClose:
		return "stdin-close"
	case FrameSignal:
		return "signal"
	case FrameStdout:
		return "stdout"
	case FrameStderr:
		return "stderr"
	case FrameExit:
		return "exit"
	case FrameError:
		return "error"
	}
	return fmt.Sprintf("frame-type-%d", byte(t))
}

func (t FrameType) known() bool { return t >= FrameStdin && t <= FrameError }

// FrameHeaderLen is the size of a frame header.
const FrameHeaderLen = 5

// MaxFramePayload caps one frame's payload.
const MaxFramePayload = 1 << 20

// ReadFrame reads one frame from r into buf (grown as needed) and returns its
// type and payload, which aliases buf. It refuses unknown types and payloads
// over MaxFramePayload. A clean end of stream before a header is io.EOF; a
// stream cut inside a frame is io.ErrUnexpectedEOF.
func ReadFrame(r io.Reader, buf []byte) (FrameType, []byte, error) {
	var h [FrameHeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	t := FrameType(h[0])
	n := binary.BigEndian.Uint32(h[1:])
	if !t.known() {
		return 0, nil, fmt.Errorf("reading frame: unknown frame type %d", h[0])
	}
	if n > MaxFramePayload {
		return 0, nil, fmt.Errorf("reading %s frame: payload of %d bytes exceeds %d", t, n, MaxFramePayload)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, fmt.Errorf("reading %s frame payload: %w", t, err)
	}
	return t, buf, nil
}

// FrameWriter writes frames to one stream; it is safe for concurrent use, so
// stdout and stderr pumps can share a connection.
type FrameWriter struct {
	mu  sync.Mutex
	w   io.Writer
	hdr [FrameHeaderLen]byte // guarded by mu
}

// NewFrameWriter returns a FrameWriter writing to w.
func NewFrameWriter(w io.Writer) *FrameWriter { return &FrameWriter{w: w} }

// WriteFrame writes payload as frames of type t, splitting it into
// MaxFramePayload pieces. An empty payload still writes one frame.
func (fw *FrameWriter) WriteFrame(t FrameType, payload []byte) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	for {
		n := min(len(payload), MaxFramePayload)
		fw.hdr[0] = byte(t)
		binary.BigEndian.PutUint32(fw.hdr[1:], uint32(n))
		// One writev for header and payload on a net.Conn.
		bufs := net.Buffers{fw.hdr[:], payload[:n]}
		if _, err := bufs.WriteTo(fw.w); err != nil {
			return fmt.Errorf("writing %s frame: %w", t, err)
		}
		payload = payload[n:]
		if len(payload) == 0 {
			return nil
		}
	}
}
