package vsock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio"
)

// QueueSize is the size of each of the three queues, Firecracker's.
const QueueSize = 256

// handshakeTimeout bounds how long a host program may take to send its
// "CONNECT <port>\n" line.
const handshakeTimeout = 5 * time.Second

// maxConnectLine bounds the CONNECT line: "CONNECT 4294967295\n" is 19
// bytes.
const maxConnectLine = 32

// Device is a virtio-vsock device bridging guest streams to unix sockets.
type Device struct {
	cfg Config
	log *slog.Logger
	ln  *net.UnixListener // owned; closed by Close
	wg  sync.WaitGroup    // accept loop and handshakes

	mu sync.Mutex
	// guarded by mu
	w            *worker            // running event loop, nil when not activated
	paused       *virtio.Activation // the activation to resume, while paused
	resetPending bool               // send TRANSPORT_RESET at the next activation
	handshakes   map[*net.UnixConn]struct{}
	closed       bool
}

var (
	_ virtio.Device = (*Device)(nil)
	_ virtio.Pauser = (*Device)(nil)
)

// New binds cfg.UDSPath and returns the device. The socket file must not
// exist yet.
func New(cfg Config, log *slog.Logger) (*Device, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(cfg.UDSPath); err == nil {
		return nil, fmt.Errorf("vsock uds_path %s already exists; remove it or choose another path", cfg.UDSPath)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.UDSPath, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on vsock uds_path: %w", err)
	}
	d := &Device{cfg: cfg, log: virtio.LimitLogs(log.With("guest_cid", cfg.GuestCID)), ln: ln, handshakes: map[*net.UnixConn]struct{}{}}
	d.wg.Add(1)
	go d.accept()
	return d, nil
}

// Config returns the configuration the device was built from.
func (d *Device) Config() Config { return d.cfg }

// DeviceID implements virtio.Device.
func (d *Device) DeviceID() uint32 { return abi.IDVsock }

// Features implements virtio.Device. Stream sockets need no feature bit
// (spec 5.10.3: without VIRTIO_VSOCK_F_STREAM or SEQPACKET, streams are
// implied).
func (d *Device) Features() uint64 { return 1<<abi.FIndirectDesc | 1<<abi.FEventIdx }

// QueueMaxSizes implements virtio.Device: rx, tx, event.
func (d *Device) QueueMaxSizes() []uint16 { return []uint16{QueueSize, QueueSize, QueueSize} }

// ReadConfig implements virtio.Device: struct virtio_vsock_config.
func (d *Device) ReadConfig(off uint64, data []byte) {
	var c [abi.VsockConfigSize]byte
	le.PutUint64(c[abi.VsockConfigOffGuestCID:], d.cfg.GuestCID)
	if off < uint64(len(c)) {
		copy(data, c[off:])
	}
}

// WriteConfig implements virtio.Device; the configuration is read-only.
func (d *Device) WriteConfig(off uint64, data []byte) {
	d.log.Warn("virtio-vsock: guest wrote read-only configuration space", "offset", off, "size", len(data))
}

// Activate implements virtio.Device: it starts the event loop.
func (d *Device) Activate(a virtio.Activation) error {
	for i, name := range []string{"rx", "tx", "event"} {
		if a.Queues[i] == nil {
			return fmt.Errorf("virtio-vsock: the driver did not enable the %s queue", name)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("virtio-vsock: device closed")
	}
	if d.w != nil || d.paused != nil {
		return errors.New("virtio-vsock: already active")
	}
	d.startLocked(a)
	return nil
}

func (d *Device) startLocked(a virtio.Activation) {
	ctx, cancel := context.WithCancel(context.Background())
	d.w = newWorker(d, a, d.resetPending, cancel)
	d.resetPending = false
	go d.w.run(ctx)
}

// Pause implements virtio.Pauser. It stops the event loop so that guest
// memory and the queues hold still for a snapshot. Live connections are
// reset (as Firecracker does when it saves a vsock device): their state
// lives in host sockets a snapshot cannot hold. Resume restarts the loop
// and tells the guest with a TRANSPORT_RESET event.
func (d *Device) Pause() {
	d.mu.Lock()
	w := d.w
	d.w = nil
	if w != nil {
		d.paused = &w.act
		d.resetPending = true
	}
	d.mu.Unlock()
	if w != nil {
		w.stop()
	}
}

// Resume implements virtio.Pauser.
func (d *Device) Resume() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.paused == nil || d.closed {
		return
	}
	a := *d.paused
	d.paused = nil
	d.startLocked(a)
}

// Notify implements virtio.Device: it wakes the event loop.
func (d *Device) Notify(int) {
	d.mu.Lock()
	w := d.w
	d.mu.Unlock()
	if w != nil {
		w.wakeUp()
	}
}

// Reset implements virtio.Device: it stops the event loop and drops every
// connection. The listener stays.
func (d *Device) Reset() {
	d.mu.Lock()
	w := d.w
	d.w = nil
	d.paused = nil
	d.resetPending = false
	d.mu.Unlock()
	if w != nil {
		w.stop()
	}
}

// Close implements virtio.Device: it stops everything and removes the
// listening socket.
func (d *Device) Close() error {
	d.Reset()
	d.mu.Lock()
	d.closed = true
	for c := range d.handshakes {
		c.Close()
	}
	d.mu.Unlock()
	err := d.ln.Close() // also unlinks UDSPath
	d.wg.Wait()
	if err != nil {
		return fmt.Errorf("closing vsock listener: %w", err)
	}
	return nil
}

// accept runs until the listener closes, starting a handshake for each host
// connection.
func (d *Device) accept() {
	defer d.wg.Done()
	for {
		c, err := d.ln.AcceptUnix()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			d.log.Error("virtio-vsock: accepting host connection", "err", err)
			time.Sleep(50 * time.Millisecond) // e.g. EMFILE: do not spin
			continue
		}
		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			c.Close()
			return
		}
		d.handshakes[c] = struct{}{}
		d.wg.Add(1)
		d.mu.Unlock()
		go d.handshake(c)
	}
}

// handshake reads "CONNECT <port>\n" and hands the connection to the event
// loop, or closes it.
func (d *Device) handshake(c *net.UnixConn) {
	defer d.wg.Done()
	port, err := readConnect(c)
	d.mu.Lock()
	delete(d.handshakes, c)
	w := d.w
	d.mu.Unlock()
	switch {
	case err != nil:
		d.log.Warn("virtio-vsock: bad host connect request", "err", err)
		c.Close()
	case w == nil:
		d.log.Warn("virtio-vsock: host connect before the guest driver is ready", "port", port)
		c.Close()
	default:
		w.post(event{kind: evHostConnect, uc: c, port: port})
	}
}

// readConnect reads the CONNECT line one byte at a time, so that nothing
// the host sends after it is consumed here.
func readConnect(c *net.UnixConn) (uint32, error) {
	if err := c.SetReadDeadline(time.Now().Add(handshakeTimeout)); err != nil {
		return 0, err
	}
	var line []byte
	var b [1]byte
	for {
		if _, err := c.Read(b[:]); err != nil {
			return 0, fmt.Errorf("reading CONNECT line: %w", err)
		}
		if b[0] == '\n' {
			break
		}
		line = append(line, b[0])
		if len(line) > maxConnectLine {
			return 0, fmt.Errorf("CONNECT line longer than %d bytes", maxConnectLine)
		}
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		return 0, err
	}
	return parseConnect(line)
}

// parseConnect parses "CONNECT <port>" (without the newline).
func parseConnect(line []byte) (uint32, error) {
	rest, ok := bytes.CutPrefix(line, []byte("CONNECT "))
	if !ok {
		return 0, fmt.Errorf("got %q, want \"CONNECT <port>\"", line)
	}
	port, err := strconv.ParseUint(string(rest), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("port in %q: want a decimal number below 2^32", line)
	}
	return uint32(port), nil
}

// State is the vsock device's guest-visible state, plain data for
// snapshots. Connections are not saved: Restore resets them.
type State struct {
	GuestCID uint64 `json:"guest_cid"`
}

// State returns the device's snapshot state.
func (d *Device) State() State { return State{GuestCID: d.cfg.GuestCID} }

// Restore rebuilds a device from st listening on cfg.UDSPath. Connections
// live at snapshot time are gone, so when the transport re-activates the
// device it queues a VIRTIO_VSOCK_EVENT_TRANSPORT_RESET event (spec
// 5.10.6.6): the guest drops its connections and keeps its listening
// sockets, which host programs can connect to again.
func Restore(cfg Config, st State, log *slog.Logger) (*Device, error) {
	if cfg.GuestCID != st.GuestCID {
		return nil, fmt.Errorf("restoring vsock: guest CID %d differs from the snapshot's %d, which the guest still uses", cfg.GuestCID, st.GuestCID)
	}
	d, err := New(cfg, log)
	if err != nil {
		return nil, fmt.Errorf("restoring vsock: %w", err)
	}
	d.resetPending = true
	return d, nil
}
