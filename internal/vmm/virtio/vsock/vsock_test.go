package vsock

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio/virtiotest"
)

const (
	defaultGuestBuf = 256 << 10
	smallRxBuf      = 4096
)

func payload(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// hostConnect connects to the device's socket and asks for guest port.
func hostConnect(t testing.TB, path string, port uint32) (*net.UnixConn, *bufio.Reader, string) {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := r.ReadString('\n')
	c.SetReadDeadline(time.Time{})
	if err != nil && line == "" {
		return c, r, ""
	}
	return c, r, line
}

// echo copies everything from c back to c, then half-closes c.
func echo(t testing.TB, c *gconn) {
	if err := echoErr(c); err != nil {
		t.Errorf("guest echo: %v", err)
	}
}

func echoErr(c *gconn) error {
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			c.Write(buf[:n])
		}
		if err == io.EOF {
			c.CloseWrite()
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// roundTrip writes data to w while reading everything from r, and checks
// it came back intact.
func roundTrip(t testing.TB, w interface {
	Write([]byte) (int, error)
	CloseWrite() error
}, r io.Reader, data []byte) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := w.Write(data)
		if err == nil {
			err = w.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("writing: %v", err)
	}
	if len(got) != len(data) || sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("echo of %d bytes came back as %d bytes with a different hash", len(data), len(got))
	}
}

func TestHostInitiated(t *testing.T) {
	dev, path := newDevice(t)
	g := newGuest(t, dev, defaultGuestBuf, smallRxBuf)
	accepted := g.Listen(52)
	go func() {
		c := <-accepted
		echo(t, c)
		if err := c.Close(); err != nil {
			t.Errorf("guest close: %v", err)
		}
	}()
	c, r, line := hostConnect(t, path, 52)
	if line != fmt.Sprintf("OK %d\n", firstHostPort) {
		t.Fatalf("handshake answer %q, want %q", line, fmt.Sprintf("OK %d\n", firstHostPort))
	}
	roundTrip(t, c, r, payload(1, 3<<20/2))
}

func TestGuestInitiated(t *testing.T) {
	dev, path := newDevice(t)
	g := newGuest(t, dev, defaultGuestBuf, smallRxBuf)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path + "_1234", Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		hc, err := ln.AcceptUnix()
		if err != nil {
			t.Error(err)
			return
		}
		defer hc.Close()
		io.Copy(hc, hc)
		hc.CloseWrite()
	}()
	c, err := g.Dial(1234)
	if err != nil {
		t.Fatal(err)
	}
	data := payload(2, 5<<20/4)
	go func() {
		c.Write(data)
		c.CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("guest got %d bytes back, want %d identical bytes", len(got), len(data))
	}
	if err := c.Close(); err != nil {
		t.Errorf("guest close: %v", err)
	}
}

func TestManyStreams(t *testing.T) {
	dev, path := newDevice(t)
	g := newGuest(t, dev, 64<<10, smallRxBuf)
	const n = 24
	accepted := g.Listen(7)
	go func() {
		for range n {
			c := <-accepted
			go echo(t, c)
		}
	}()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path + "_9", Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			hc, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			go func() {
				defer hc.Close()
				io.Copy(hc, hc)
				hc.CloseWrite()
			}()
		}
	}()
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(2)
		go func() { // host-initiated
			defer wg.Done()
			c, r, line := hostConnect(t, path, 7)
			if !strings.HasPrefix(line, "OK ") {
				t.Errorf("stream %d: handshake %q", i, line)
				return
			}
			roundTrip(t, c, r, payload(uint64(100+i), 256<<10+i))
		}()
		go func() { // guest-initiated
			defer wg.Done()
			c, err := g.Dial(9)
			if err != nil {
				t.Errorf("guest stream %d: %v", i, err)
				return
			}
			data := payload(uint64(200+i), 200<<10+i)
			go func() {
				c.Write(data)
				c.CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("guest stream %d: %d bytes back (err %v), want %d identical", i, len(got), err, len(data))
			}
			c.Close()
		}()
	}
	donec := make(chan struct{})
	go func() { wg.Wait(); close(donec) }()
	select {
	case <-donec:
	case <-time.After(60 * time.Second):
		t.Fatal("streams stalled for a minute")
	}
}

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

// TestBackpressureHostToGuest: a guest that does not read must stop the
// host writer instead of making the device buffer the stream.
func TestBackpressureHostToGuest(t *testing.T) {
	dev, path := newDevice(t)
	const guestBuf = 64 << 10
	g := newGuest(t, dev, guestBuf, smallRxBuf)
	accepted := g.Listen(5)
	c, r, line := hostConnect(t, path, 5)
	if !strings.HasPrefix(line, "OK ") {
		t.Fatalf("handshake %q", line)
	}
	_ = r
	gc := <-accepted
	data := payload(5, 4<<20)
	var mu sync.Mutex
	written := 0
	go func() {
		for off := 0; off < len(data); off += 16 << 10 {
			n, err := c.Write(data[off : off+16<<10])
			mu.Lock()
			written += n
			mu.Unlock()
			if err != nil {
				return
			}
		}
		c.CloseWrite()
	}()
	time.Sleep(500 * time.Millisecond)
	mu.Lock()
	stalled := written
	mu.Unlock()
	// Guest buffer + one device chunk + the kernel's socket buffers; far
	// below the 4 MiB the host wants to write.
	if stalled >= 2<<20 {
		t.Errorf("host wrote %d bytes to a guest that reads nothing; want backpressure well below %d", stalled, 2<<20)
	}
	// A slow reader then gets everything, intact and in order.
	got := make([]byte, 0, len(data))
	buf := make([]byte, 8<<10)
	for len(got) < len(data) {
		n, err := gc.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("guest read after %d bytes: %v", len(got), err)
		}
		if len(got)%(512<<10) < len(buf) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if !bytes.Equal(got, data) {
		t.Fatal("slow reader got corrupted data")
	}
	if g.maxRbuf > guestBuf {
		t.Errorf("guest buffered %d bytes, above its %d credit", g.maxRbuf, guestBuf)
	}
	t.Logf("host stalled after %d bytes", stalled)
}

// TestBackpressureGuestToHost: a host that does not read must stop the
// guest's sends through credit, with the device holding at most bufAlloc.
func TestBackpressureGuestToHost(t *testing.T) {
	dev, path := newDevice(t)
	g := newGuest(t, dev, defaultGuestBuf, smallRxBuf)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path + "_6", Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hcc := make(chan *net.UnixConn, 1)
	go func() {
		hc, err := ln.AcceptUnix()
		if err == nil {
			hcc <- hc
		}
	}()
	c, err := g.Dial(6)
	if err != nil {
		t.Fatal(err)
	}
	hc := <-hcc
	defer hc.Close()
	data := payload(6, 4<<20)
	c.Write(data)
	c.CloseWrite()
	time.Sleep(500 * time.Millisecond)
	g.mu.Lock()
	sent, unsent := c.txCnt, len(c.wbuf)
	g.mu.Unlock()
	if unsent == 0 || sent >= 2<<20 {
		t.Errorf("guest pushed %d bytes (%d left) to a host that reads nothing; want credit to stop it well below %d", sent, unsent, 2<<20)
	}
	got, err := io.ReadAll(iotestSlow(hc))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("host got %d bytes, want %d identical", len(got), len(data))
	}
	t.Logf("guest stalled after %d bytes", sent)
}

// iotestSlow reads in small pieces with pauses.
func iotestSlow(r io.Reader) io.Reader { return &slowReader{r: r} }

type slowReader struct {
	r io.Reader
	n int
}

func (s *slowReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p[:min(len(p), 32<<10)])
	s.n += n
	if s.n >= 1<<20 {
		s.n = 0
		time.Sleep(20 * time.Millisecond)
	}
	return n, err
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

func TestRestoreSendsTransportReset(t *testing.T) {
	dev, path := newDevice(t)
	mem := virtiotest.NewMem(t, 0x100000, 16<<20)
	irq := virtiotest.NewIRQ()
	m := virtio.NewMMIO(dev, mem, irq, discard())
	g := startGuest(t, m, mem, irq, defaultGuestBuf, smallRxBuf, true)
	accepted := g.Listen(52)
	go func() {
		for c := range accepted {
			go echoErr(c) // the first connection is reset by the restore
		}
	}()
	c, r, line := hostConnect(t, path, 52)
	if !strings.HasPrefix(line, "OK ") {
		t.Fatalf("handshake %q", line)
	}
	c.Write([]byte("x"))
	if b, _ := r.ReadByte(); b != 'x' {
		t.Fatalf("echo before snapshot: %q", b)
	}
	// Snapshot: pause the guest and the device, save both states, tear
	// the VMM down.
	g.shutdown()
	m.Pause()
	mst, dst := m.State(), dev.State()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("Close left %s behind (stat: %v)", path, err)
	}
	blob, _ := json.Marshal(struct {
		M virtio.State
		D State
	}{mst, dst})
	var back struct {
		M virtio.State
		D State
	}
	if err := json.Unmarshal(blob, &back); err != nil {
		t.Fatal(err)
	}
	// The host's connection died with the old VMM.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.ReadByte(); err == nil {
		t.Error("host connection survived the VMM")
	}
	// Restore: same guest memory, new device and transport.
	if _, err := Restore(Config{GuestCID: 4, UDSPath: path}, back.D, discard()); err == nil {
		t.Error("restore with a different CID: got nil error")
	}
	dev2, err := Restore(Config{GuestCID: guestCID, UDSPath: path}, back.D, discard())
	if err != nil {
		t.Fatal(err)
	}
	m2, err := virtio.RestoreMMIO(dev2, mem, irq, discard(), back.M)
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	g2 := &guest{}
	*g2 = guest{t: t, mmio: m2, bufAlloc: defaultGuestBuf, rxSize: smallRxBuf,
		conns: map[gkey]*gconn{}, listeners: g.listeners, nextPort: g.nextPort,
		rxAddr: g.rxAddr, txAddr: g.txAddr, evAddr: g.evAddr, txFree: g.txFree,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	g2.cond = sync.NewCond(&g2.mu)
	g2.drv = g.drv
	g2.drv.Dev = m2
	g2.rx, g2.tx, g2.evq = g.rx, g.tx, g.evq
	// The guest kernel's connections survive in guest memory; the new
	// guest loop starts with the same (fresh copies, to keep the old
	// loop's goroutines out of it).
	for k := range g.conns {
		g2.conns[k] = &gconn{g: g2, key: k, state: gEstablished}
	}
	if len(g2.conns) == 0 {
		t.Fatal("no guest connection was live at snapshot time")
	}
	go g2.loop()
	defer g2.shutdown()
	deadline := time.Now().Add(10 * time.Second)
	for len(g2.Events()) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if ev := g2.Events(); len(ev) != 1 || ev[0] != abi.VsockEventTransportReset {
		t.Fatalf("events after restore: %v, want one TRANSPORT_RESET (0)", ev)
	}
	g2.mu.Lock()
	live := len(g2.conns)
	g2.mu.Unlock()
	if live != 0 {
		t.Errorf("guest still has %d connections after TRANSPORT_RESET", live)
	}
	// The guest's listener survived: new host connections work.
	c2, r2, line := hostConnect(t, path, 52)
	if !strings.HasPrefix(line, "OK ") {
		t.Fatalf("handshake after restore %q", line)
	}
	roundTrip(t, c2, r2, payload(9, 100<<10))
}

// TestPauseResume pauses the device as a snapshot does and resumes the
// same VM: live connections are reset, the guest hears TRANSPORT_RESET,
// and new connections work.
func TestPauseResume(t *testing.T) {
	dev, path := newDevice(t)
	mem := virtiotest.NewMem(t, 0x100000, 16<<20)
	irq := virtiotest.NewIRQ()
	m := virtio.NewMMIO(dev, mem, irq, discard())
	defer m.Close()
	g := startGuest(t, m, mem, irq, defaultGuestBuf, smallRxBuf, true)
	defer g.shutdown()
	accepted := g.Listen(52)
	go func() {
		for c := range accepted {
			go echoErr(c)
		}
	}()
	c, r, line := hostConnect(t, path, 52)
	if !strings.HasPrefix(line, "OK ") {
		t.Fatalf("handshake %q", line)
	}
	m.Pause()
	waitEOF := func() error {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := r.ReadByte()
		return err
	}
	if err := waitEOF(); err == nil || os.IsTimeout(err) {
		t.Errorf("host connection after Pause: read error %v, want it closed", err)
	}
	before := m.State()
	m.Resume()
	deadline := time.Now().Add(10 * time.Second)
	for len(g.Events()) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if ev := g.Events(); len(ev) != 1 || ev[0] != abi.VsockEventTransportReset {
		t.Fatalf("events after resume: %v, want one TRANSPORT_RESET", ev)
	}
	if got := m.State(); got.Queues[abi.VsockQueueEvent].NextUsed != before.Queues[abi.VsockQueueEvent].NextUsed+1 {
		t.Errorf("event queue used index %d, want %d", got.Queues[abi.VsockQueueEvent].NextUsed, before.Queues[abi.VsockQueueEvent].NextUsed+1)
	}
	c2, r2, line := hostConnect(t, path, 52)
	if !strings.HasPrefix(line, "OK ") {
		t.Fatalf("handshake after resume %q", line)
	}
	roundTrip(t, c2, r2, payload(11, 300<<10))
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
