package vsock

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio/virtiotest"
)

func TestRefusedConnections(t *testing.T) {
	dev, path := newDevice(t)
	g := newGuest(t, dev, defaultGuestBuf, smallRxBuf)
	// No guest listener on 99: the host connection is closed without OK.
	_, _, line := hostConnect(t, path, 99)
	if line != "" {
		t.Errorf("connect to a port nobody listens on: got %q, want the connection closed", line)
	}
	// No host listener for guest port 77: the guest gets RST.
	if _, err := g.Dial(77); err == nil {
		t.Error("guest dial to a port with no host listener: got nil error")
	}
	// Bad CONNECT lines are refused; the device keeps serving.
	for _, bad := range []string{"HELLO\n", "CONNECT\n", "CONNECT abc\n", "CONNECT -1\n", "CONNECT 4294967296\n",
		"connect 52\n", strings.Repeat("C", 100)} {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, bad)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		// EOF, or ECONNRESET when the device closed with our bytes unread.
		if n, err := c.Read(make([]byte, 16)); n != 0 || err == nil || os.IsTimeout(err) {
			t.Errorf("bad line %q: read (%d, %v), want the connection closed", bad, n, err)
		}
		c.Close()
	}
	accepted := g.Listen(52)
	go func() { echo(t, <-accepted) }()
	c, r, line := hostConnect(t, path, 52)
	if !strings.HasPrefix(line, "OK ") {
		t.Fatalf("after refusals: handshake %q", line)
	}
	roundTrip(t, c, r, []byte("still alive"))
}

func TestConnectTimeout(t *testing.T) {
	dev, path := newDevice(t)
	g := newGuest(t, dev, defaultGuestBuf, smallRxBuf)
	g.mu.Lock()
	g.ignoreRequests = true // a guest that never answers
	g.mu.Unlock()
	start := time.Now()
	_, _, line := hostConnect(t, path, 52)
	if line != "" {
		t.Errorf("unanswered connect: got %q, want the connection closed", line)
	}
	if d := time.Since(start); d < connectTimeout {
		t.Errorf("closed after %v, before the %v timeout", d, connectTimeout)
	}
}

func TestAbruptClose(t *testing.T) {
	dev, path := newDevice(t)
	g := newGuest(t, dev, defaultGuestBuf, smallRxBuf)
	accepted := g.Listen(8)
	// Host closes mid-stream: the guest sees the stream end.
	c, _, _ := hostConnect(t, path, 8)
	gc := <-accepted
	c.Write([]byte("partial"))
	c.Close()
	got, err := io.ReadAll(gc)
	if string(got) != "partial" {
		t.Errorf("guest read %q (err %v) before the close, want %q", got, err, "partial")
	}
	if err := gc.Close(); err != nil { // the device answers the guest's close with RST
		t.Errorf("guest close after host close: %v", err)
	}
	waitConns(t, dev, 0)
	// Guest resets mid-stream: the host sees its socket closed.
	c2, r2, _ := hostConnect(t, path, 8)
	gc2 := <-accepted
	gc2.Write([]byte("bye"))
	c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	got = make([]byte, 3)
	if _, err := io.ReadFull(r2, got); err != nil || string(got) != "bye" {
		t.Fatalf("host read %q, %v; want %q", got, err, "bye")
	}
	waitConns(t, dev, 1)
	gc2.Abort()
	if n, err := r2.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("host read (%d, %v) after guest RST, want EOF", n, err)
	}
	waitConns(t, dev, 0)
}

// waitConns waits until the device has n live connections.
func waitConns(t *testing.T, d *Device, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d.mu.Lock()
		w := d.w
		d.mu.Unlock()
		got := -1
		if w != nil {
			got = int(w.live.Load())
		}
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("device has %d connections, want %d", got, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMalformedPackets(t *testing.T) {
	dev, path := newDevice(t)
	g := newGuest(t, dev, defaultGuestBuf, smallRxBuf)
	good := header{srcCID: guestCID, dstCID: abi.VsockCIDHost, srcPort: 5000, dstPort: 6000, typ: abi.VsockTypeStream}
	with := func(f func(*header)) header { h := good; f(&h); return h }
	g.sendRaw(with(func(h *header) { h.srcCID = 9; h.op = abi.VsockOpRequest }), nil)
	g.sendRaw(with(func(h *header) { h.dstCID = 7; h.op = abi.VsockOpRequest }), nil)
	g.sendRaw(with(func(h *header) { h.op = 99 }), nil)
	g.sendRaw(with(func(h *header) { h.op = abi.VsockOpRW; h.len = 100 }), []byte("short")) // len beyond the chain
	g.sendRaw(with(func(h *header) { h.op = abi.VsockOpRW }), []byte("no such connection"))
	g.sendRaw(with(func(h *header) { h.op = abi.VsockOpRequest; h.typ = abi.VsockTypeSeqpacket }), nil)
	g.sendRaw(with(func(h *header) { h.op = abi.VsockOpShutdown; h.flags = 3 }), nil)
	// The device still works and is not broken.
	accepted := g.Listen(52)
	go func() { echo(t, <-accepted) }()
	c, r, line := hostConnect(t, path, 52)
	if !strings.HasPrefix(line, "OK ") {
		t.Fatalf("after malformed packets: handshake %q", line)
	}
	roundTrip(t, c, r, []byte("ok"))
	if s := g.drv.Read32(abi.MMIOStatus); s&abi.StatusDeviceNeedsReset != 0 {
		t.Errorf("status 0x%x: malformed packets must not break the device", s)
	}
}

// TestCreditOverrun: a guest sending beyond the advertised buffer is reset.
func TestCreditOverrun(t *testing.T) {
	dev, path := newDevice(t)
	g := newGuest(t, dev, defaultGuestBuf, smallRxBuf)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path + "_3", Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		hc, err := ln.AcceptUnix()
		if err == nil {
			time.Sleep(2 * time.Second) // never reads in time
			hc.Close()
		}
	}()
	c, err := g.Dial(3)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, maxPayload)
	for range bufAlloc/maxPayload + 8 { // ignore credit
		h := g.hdr(c, abi.VsockOpRW, 0)
		h.bufAlloc = defaultGuestBuf
		g.sendRaw(h, chunk)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for !c.rst && time.Now().Before(deadline) {
		g.cond.Wait()
	}
	if !c.rst {
		t.Error("guest overrunning its credit was not reset")
	}
}

func TestBadRXBuffer(t *testing.T) {
	dev, path := newDevice(t)
	mem := virtiotest.NewMem(t, 0x100000, 1<<20)
	irq := virtiotest.NewIRQ()
	m := virtio.NewMMIO(dev, mem, irq, discard())
	defer m.Close()
	d := virtiotest.NewDriver(t, m, mem, irq)
	d.Init(v1, 16, 16, 16)
	d.Queues[0].Add(d.Writable(10)) // too small for a header
	d.Queues[0].Kick()
	// A host connection makes the device send a REQUEST into it.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "CONNECT 1\n")
	deadline := time.Now().Add(10 * time.Second)
	for d.Read32(abi.MMIOStatus)&abi.StatusDeviceNeedsReset == 0 {
		if time.Now().After(deadline) {
			t.Fatal("a receive buffer too small for a header did not set DEVICE_NEEDS_RESET")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestConfig(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"host cid", Config{GuestCID: 2, UDSPath: filepath.Join(dir, "a")}, "guest CID 2 is invalid"},
		{"cid too big", Config{GuestCID: 1 << 32, UDSPath: filepath.Join(dir, "a")}, "is invalid"},
		{"no path", Config{GuestCID: 3}, "uds_path is empty"},
		{"long path", Config{GuestCID: 3, UDSPath: "/" + strings.Repeat("x", 100)}, "too long"},
	} {
		if _, err := New(tt.cfg, discard()); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
	exists := filepath.Join(dir, "exists")
	os.WriteFile(exists, nil, 0o644)
	if _, err := New(Config{GuestCID: 3, UDSPath: exists}, discard()); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("existing uds_path: got %v", err)
	}
	d, _ := newDevice(t)
	defer d.Close()
	b := make([]byte, 8)
	d.ReadConfig(0, b)
	if got := le.Uint64(b); got != guestCID {
		t.Errorf("config guest_cid: got %d, want %d", got, guestCID)
	}
}

// TestNoGoroutineLeak runs traffic, closes everything and checks that the
// goroutine count returns to where it started.
func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		dev, path := newDevice(t)
		mem := virtiotest.NewMem(t, 0x100000, 16<<20)
		irq := virtiotest.NewIRQ()
		m := virtio.NewMMIO(dev, mem, irq, discard())
		g := startGuest(t, m, mem, irq, defaultGuestBuf, smallRxBuf, true)
		accepted := g.Listen(52)
		go func() {
			gc := <-accepted
			b := make([]byte, 2)
			gc.Read(b)
			gc.Write(b)
		}()
		c, r, _ := hostConnect(t, path, 52)
		c.Write([]byte("hi"))
		r.ReadByte()
		// Leave the connection open: Close must tear it down.
		g.shutdown()
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before, %d after Close:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestReplyBacklogStopsTX: a guest that sends packets needing replies but
// posts no receive buffers must be throttled (its TX queue stops being
// consumed) instead of growing the device's reply queue without bound.
func TestReplyBacklogStopsTX(t *testing.T) {
	dev, _ := newDevice(t)
	mem := virtiotest.NewMem(t, 0x100000, 4<<20)
	irq := virtiotest.NewIRQ()
	m := virtio.NewMMIO(dev, mem, irq, discard())
	defer m.Close()
	d := virtiotest.NewDriver(t, m, mem, irq)
	d.Init(v1, 64, 64, 4)
	rx, tx := d.Queues[0], d.Queues[1]
	pkt := make([]byte, abi.VsockHdrSize)
	header{srcCID: guestCID, dstCID: abi.VsockCIDHost, srcPort: 1, dstPort: 2, typ: abi.VsockTypeStream,
		op: abi.VsockOpCreditRequest}.encode(pkt) // no such connection: each needs an RST reply
	buf := d.Readable(pkt)
	sent, consumed := 0, 0
	for stalled := 0; stalled < 20; {
		for tx.Free() > 0 {
			tx.Add(buf)
			sent++
		}
		tx.Kick()
		time.Sleep(2 * time.Millisecond)
		n := 0
		for {
			if _, _, ok := tx.Used(); !ok {
				break
			}
			n++
		}
		consumed += n
		if n == 0 {
			stalled++
		} else {
			stalled = 0
		}
		if consumed > 4*maxCtrl {
			t.Fatalf("device consumed %d packets with no receive buffers; want it to stop near %d", consumed, maxCtrl)
		}
	}
	if consumed < maxCtrl || consumed > maxCtrl+64 {
		t.Errorf("device consumed %d packets before stopping, want about %d", consumed, maxCtrl)
	}
	// Receive buffers drain the backlog (RSTs) and TX moves again.
	rsts := 0
	deadline := time.Now().Add(10 * time.Second)
	for consumed < sent && time.Now().Before(deadline) {
		for rx.Free() > 0 {
			rx.Add(d.Writable(abi.VsockHdrSize))
		}
		rx.Kick()
		time.Sleep(time.Millisecond)
		for {
			_, n, ok := rx.Used()
			if !ok {
				break
			}
			if n != abi.VsockHdrSize {
				t.Fatalf("reply of %d bytes, want a bare header", n)
			}
			rsts++
		}
		for {
			if _, _, ok := tx.Used(); !ok {
				break
			}
			consumed++
		}
		tx.Kick()
	}
	if consumed != sent {
		t.Errorf("after posting receive buffers: %d of %d packets consumed", consumed, sent)
	}
	if rsts == 0 {
		t.Error("no RST replies arrived")
	}
}

// TestDriverResetMidStream resets the device from the driver side while a
// stream is moving data: the host connection is closed, and the driver can
// bring the device up again on fresh queues.
func TestDriverResetMidStream(t *testing.T) {
	dev, path := newDevice(t)
	mem := virtiotest.NewMem(t, 0x100000, 32<<20)
	irq := virtiotest.NewIRQ()
	m := virtio.NewMMIO(dev, mem, irq, discard())
	defer m.Close()
	g := startGuest(t, m, mem, irq, 64<<10, smallRxBuf, true)
	accepted := g.Listen(52)
	c, _, line := hostConnect(t, path, 52)
	if !strings.HasPrefix(line, "OK ") {
		t.Fatalf("handshake %q", line)
	}
	<-accepted
	go c.Write(payload(3, 4<<20)) // more than the guest will ever read
	time.Sleep(50 * time.Millisecond)
	g.shutdown()
	g.drv.Write32(abi.MMIOStatus, 0)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
		t.Errorf("host read after driver reset: %v, want the connection closed", err)
	}
	// Bring the device up again with new queues.
	g2 := startGuest(t, m, mem, irq, defaultGuestBuf, smallRxBuf, true)
	defer g2.shutdown()
	accepted2 := g2.Listen(52)
	go func() { echo(t, <-accepted2) }()
	c2, r2, line := hostConnect(t, path, 52)
	if !strings.HasPrefix(line, "OK ") {
		t.Fatalf("handshake after reset %q", line)
	}
	roundTrip(t, c2, r2, payload(4, 200<<10))
}

// TestGuestResetFlushes: a guest that sends data and then RST at once (the
// probe guest answers SHUTDOWN that way) must not lose the data to a host
// that reads slowly; the host then sees EOF.
func TestGuestResetFlushes(t *testing.T) {
	dev, path := newDevice(t)
	g := newGuest(t, dev, defaultGuestBuf, smallRxBuf)
	accepted := g.Listen(52)
	c, r, line := hostConnect(t, path, 52)
	if !strings.HasPrefix(line, "OK ") {
		t.Fatalf("handshake %q", line)
	}
	gc := <-accepted
	data := payload(12, bufAlloc-6<<10) // within credit: no update needed
	gc.Write(data)
	g.mu.Lock()
	for len(gc.wbuf) > 0 {
		g.cond.Wait()
	}
	g.mu.Unlock()
	gc.Abort()
	time.Sleep(300 * time.Millisecond) // let the RST overtake the host reader
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("host read %d of %d bytes (err %v) from a connection the guest reset", len(got), len(data), err)
	}
	waitConns(t, dev, 0)
}
