package vsock

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio/virtiotest"
)

// This file is a small guest vsock stack, enough to play Linux's
// virtio_transport against the device: it keeps receive buffers posted,
// runs the connection state machine and both sides of credit flow control,
// and offers a blocking Read/Write API to test goroutines.

const (
	guestCID    = 3
	v1          = 1 << abi.FVersion1
	txSlotSize  = abi.VsockHdrSize + maxPayload
	txSlots     = 64
	eventBufs   = 4
	guestRxBufs = 64
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

type gkey struct{ local, peer uint32 }

type gstate int

const (
	gConnecting gstate = iota
	gEstablished
	gClosed
)

// gconn is one guest-side stream socket.
type gconn struct {
	g           *guest
	key         gkey
	state       gstate
	connected   chan error
	rbuf        bytes.Buffer
	rxCnt       uint32
	fwdCnt      uint32
	lastAdvFwd  uint32
	wantUpdate  bool
	peerBuf     uint32
	peerFwd     uint32
	txCnt       uint32
	wbuf        []byte
	peerShutSnd bool
	rst         bool
	shutFlags   uint32 // SHUTDOWN to send once wbuf is empty
	shutSent    bool
}

type outPkt struct {
	c    *gconn // nil for replies to unknown connections
	h    header
	data []byte
}

// guest runs the guest side in its own goroutine.
type guest struct {
	t              testing.TB
	drv            *virtiotest.Driver
	mmio           *virtio.MMIO
	rx, tx         *virtiotest.Queue
	evq            *virtiotest.Queue
	bufAlloc       uint32
	rxSize         uint32
	ignoreRequests bool
	// onlyAskedCredit models the probe guest: it counts bytes as forwarded
	// when they arrive and sends CREDIT_UPDATE only when the host asks.
	onlyAskedCredit bool

	mu        sync.Mutex
	cond      *sync.Cond
	conns     map[gkey]*gconn
	listeners map[uint32]chan *gconn
	out       []outPkt
	events    []uint32
	nextPort  uint32
	rxAddr    map[uint16]uint64
	txFree    []uint64
	txAddr    map[uint16]uint64
	evAddr    map[uint16]uint64
	maxRbuf   int

	wake chan struct{}
	stop chan struct{}
	done chan struct{}
}

// newGuest brings up the transport over dev and starts the guest loop.
func newGuest(t testing.TB, dev virtio.Device, bufAlloc, rxSize uint32) *guest {
	t.Helper()
	mem := virtiotest.NewMem(t, 0x100000, 16<<20)
	irq := virtiotest.NewIRQ()
	m := virtio.NewMMIO(dev, mem, irq, discard())
	g := startGuest(t, m, mem, irq, bufAlloc, rxSize, true)
	t.Cleanup(func() {
		g.shutdown()
		if err := m.Close(); err != nil {
			t.Errorf("closing transport: %v", err)
		}
	})
	return g
}

// startGuest runs the guest against an existing transport; init says
// whether to run the driver's initialisation or reuse queues already set up.
func startGuest(t testing.TB, m *virtio.MMIO, mem *virtiotest.Mem, irq *virtiotest.IRQ, bufAlloc, rxSize uint32, init bool) *guest {
	g := &guest{
		t: t, mmio: m, bufAlloc: bufAlloc, rxSize: rxSize,
		conns: map[gkey]*gconn{}, listeners: map[uint32]chan *gconn{}, nextPort: 2000,
		rxAddr: map[uint16]uint64{}, txAddr: map[uint16]uint64{}, evAddr: map[uint16]uint64{},
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	g.cond = sync.NewCond(&g.mu)
	g.drv = virtiotest.NewDriver(t, m, mem, irq)
	if init {
		// Negotiate what Linux does: event idx, so the device's
		// notification and interrupt suppression is exercised too.
		g.drv.Init(v1|1<<abi.FEventIdx, QueueSize, QueueSize, QueueSize)
	}
	g.rx, g.tx, g.evq = g.drv.Queues[0], g.drv.Queues[1], g.drv.Queues[2]
	for range guestRxBufs {
		g.postRx(g.drv.Alloc(uint64(rxSize), 8))
	}
	for range eventBufs {
		a := g.drv.Alloc(abi.VsockEventSize, 8)
		h, _ := g.evq.Add(virtiotest.Buf{Addr: a, Len: abi.VsockEventSize, Write: true})
		g.evAddr[h] = a
	}
	for range txSlots {
		g.txFree = append(g.txFree, g.drv.Alloc(txSlotSize, 8))
	}
	g.rx.Kick()
	g.evq.Kick()
	go g.loop()
	return g
}

// shutdown stops the guest loop and fails its connections' blocked reads,
// as if the guest had been frozen.
func (g *guest) shutdown() {
	select {
	case <-g.stop:
	default:
		close(g.stop)
	}
	<-g.done
	g.mu.Lock()
	for _, c := range g.conns {
		c.rst = true
	}
	g.cond.Broadcast()
	g.mu.Unlock()
}

func (g *guest) kick() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

func (g *guest) loop() {
	defer close(g.done)
	for {
		g.mu.Lock()
		g.step()
		g.mu.Unlock()
		select {
		case <-g.stop:
			return
		case <-g.wake:
		case <-g.drv.IRQ.C:
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// step does one round of driver work; g.mu is held.
func (g *guest) step() {
	for {
		if _, _, ok := g.tx.Used(); !ok {
			break
		}
	}
	// Reclaim TX slots: every chain the device used frees its slot.
	for h, a := range g.txAddr {
		if _, out := g.txOutstanding(h); !out {
			g.txFree = append(g.txFree, a)
			delete(g.txAddr, h)
		}
	}
	reposted := false
	for {
		h, n, ok := g.rx.Used()
		if !ok {
			break
		}
		a := g.rxAddr[h]
		delete(g.rxAddr, h)
		g.receive(g.drv.Bytes(a, uint64(n)))
		g.postRx(a)
		reposted = true
	}
	if reposted {
		g.rx.Kick()
	}
	for {
		h, _, ok := g.evq.Used()
		if !ok {
			break
		}
		a := g.evAddr[h]
		delete(g.evAddr, h)
		g.events = append(g.events, le.Uint32(g.drv.Bytes(a, 4)))
		g.onTransportReset()
		nh, _ := g.evq.Add(virtiotest.Buf{Addr: a, Len: abi.VsockEventSize, Write: true})
		g.evAddr[nh] = a
		g.evq.Kick()
	}
	g.collectOutput()
	sent := false
	for len(g.out) > 0 && len(g.txFree) > 0 {
		p := g.out[0]
		g.out = g.out[1:]
		if p.c != nil {
			p.h.bufAlloc, p.h.fwdCnt = g.bufAlloc, p.c.fwdCnt
			p.c.lastAdvFwd = p.c.fwdCnt
		}
		p.h.len = uint32(len(p.data))
		a := g.txFree[0]
		g.txFree = g.txFree[1:]
		b := g.drv.Bytes(a, uint64(abi.VsockHdrSize+len(p.data)))
		p.h.encode(b)
		copy(b[abi.VsockHdrSize:], p.data)
		h, ok := g.tx.Add(virtiotest.Buf{Addr: a, Len: uint32(len(b))})
		if !ok {
			g.t.Errorf("guest tx queue full")
			return
		}
		g.txAddr[h] = a
		sent = true
	}
	if sent {
		g.tx.Kick()
	}
	g.cond.Broadcast()
}

// postRx posts the receive buffer at a as two descriptors, header then
// data, the way Linux 6.1 and the probe guest lay them out; the device must
// spread each packet over both.
func (g *guest) postRx(a uint64) {
	h, ok := g.rx.Add(
		virtiotest.Buf{Addr: a, Len: abi.VsockHdrSize, Write: true},
		virtiotest.Buf{Addr: a + abi.VsockHdrSize, Len: g.rxSize - abi.VsockHdrSize, Write: true})
	if !ok {
		g.t.Errorf("guest rx queue full")
		return
	}
	g.rxAddr[h] = a
}

// txOutstanding reports whether tx chain h is still held by the device.
func (g *guest) txOutstanding(h uint16) (uint16, bool) {
	return h, g.tx.Outstanding(h)
}

// collectOutput turns connection state into packets: payload within the
// host's credit, pending SHUTDOWNs and credit updates.
func (g *guest) collectOutput() {
	for _, c := range g.conns {
		if c.state != gEstablished {
			continue
		}
		for len(c.wbuf) > 0 && len(g.out) < txSlots {
			free := c.peerBuf - (c.txCnt - c.peerFwd)
			if c.txCnt-c.peerFwd > c.peerBuf || free == 0 {
				break
			}
			n := min(uint32(len(c.wbuf)), free, maxPayload)
			g.out = append(g.out, outPkt{c: c, h: g.hdr(c, abi.VsockOpRW, 0), data: c.wbuf[:n]})
			c.wbuf = c.wbuf[n:]
			c.txCnt += n
		}
		if len(c.wbuf) == 0 && c.shutFlags != 0 && !c.shutSent {
			c.shutSent = true
			g.out = append(g.out, outPkt{c: c, h: g.hdr(c, abi.VsockOpShutdown, c.shutFlags)})
		}
		if c.wantUpdate {
			c.wantUpdate = false
			g.out = append(g.out, outPkt{c: c, h: g.hdr(c, abi.VsockOpCreditUpdate, 0)})
		}
	}
}

func (g *guest) hdr(c *gconn, op uint16, flags uint32) header {
	return header{srcCID: guestCID, dstCID: abi.VsockCIDHost, srcPort: c.key.local, dstPort: c.key.peer,
		typ: abi.VsockTypeStream, op: op, flags: flags}
}

func (g *guest) receive(b []byte) {
	h, err := parseHeader(b)
	if err != nil {
		g.t.Errorf("guest received a bad packet: %v", err)
		return
	}
	if h.srcCID != abi.VsockCIDHost || h.dstCID != guestCID || h.typ != abi.VsockTypeStream {
		g.t.Errorf("guest received a packet with cids %d->%d type %d", h.srcCID, h.dstCID, h.typ)
	}
	if int(h.len) != len(b)-abi.VsockHdrSize {
		g.t.Errorf("packet len field %d, used length says %d", h.len, len(b)-abi.VsockHdrSize)
		return
	}
	key := gkey{local: h.dstPort, peer: h.srcPort}
	c := g.conns[key]
	if c == nil {
		if h.op == abi.VsockOpRequest {
			ch, ok := g.listeners[h.dstPort]
			if g.ignoreRequests {
				return
			}
			if !ok {
				g.out = append(g.out, outPkt{h: header{srcCID: guestCID, dstCID: abi.VsockCIDHost, srcPort: h.dstPort,
					dstPort: h.srcPort, typ: abi.VsockTypeStream, op: abi.VsockOpRST}})
				return
			}
			c = &gconn{g: g, key: key, state: gEstablished, peerBuf: h.bufAlloc, peerFwd: h.fwdCnt}
			g.conns[key] = c
			g.out = append(g.out, outPkt{c: c, h: g.hdr(c, abi.VsockOpResponse, 0)})
			select {
			case ch <- c:
			default:
				g.t.Errorf("guest accept queue of port %d full", h.dstPort)
			}
		}
		return // RST or stray packets for unknown connections
	}
	if h.op != abi.VsockOpRST {
		c.peerBuf, c.peerFwd = h.bufAlloc, h.fwdCnt
	}
	switch h.op {
	case abi.VsockOpResponse:
		if c.state == gConnecting {
			c.state = gEstablished
			c.connected <- nil
		}
	case abi.VsockOpRW:
		c.rbuf.Write(b[abi.VsockHdrSize:])
		c.rxCnt += h.len
		if g.onlyAskedCredit {
			c.fwdCnt += h.len
			break
		}
		if c.rbuf.Len() > int(g.bufAlloc) {
			g.t.Errorf("host overran guest credit: %d bytes buffered, %d advertised", c.rbuf.Len(), g.bufAlloc)
		}
		g.maxRbuf = max(g.maxRbuf, c.rbuf.Len())
	case abi.VsockOpCreditRequest:
		c.wantUpdate = true
	case abi.VsockOpShutdown:
		if h.flags&abi.VsockShutdownSend != 0 {
			c.peerShutSnd = true
		}
	case abi.VsockOpRST:
		if c.state == gConnecting {
			c.connected <- errors.New("connection refused (RST)")
		}
		c.state, c.rst = gClosed, true
		delete(g.conns, key)
	}
}

func (g *guest) onTransportReset() {
	for k, c := range g.conns {
		c.state, c.rst = gClosed, true
		delete(g.conns, k)
	}
}

// Listen makes the guest accept host connections to port.
func (g *guest) Listen(port uint32) <-chan *gconn {
	g.mu.Lock()
	defer g.mu.Unlock()
	ch := make(chan *gconn, 128)
	g.listeners[port] = ch
	return ch
}

// Dial connects from the guest to host port.
func (g *guest) Dial(port uint32) (*gconn, error) {
	g.mu.Lock()
	g.nextPort++
	c := &gconn{g: g, key: gkey{local: g.nextPort, peer: port}, state: gConnecting, connected: make(chan error, 1)}
	g.conns[c.key] = c
	g.out = append(g.out, outPkt{c: c, h: g.hdr(c, abi.VsockOpRequest, 0)})
	g.mu.Unlock()
	g.kick()
	select {
	case err := <-c.connected:
		return c, err
	case <-time.After(10 * time.Second):
		return nil, fmt.Errorf("dial %d: timed out", port)
	}
}

// Write queues p for sending, blocking while a send buffer's worth is
// already queued, as a socket does.
func (c *gconn) Write(p []byte) (int, error) {
	g := c.g
	g.mu.Lock()
	for len(c.wbuf) >= 256<<10 && c.state == gEstablished && !c.rst {
		g.cond.Wait()
	}
	if c.state != gEstablished || c.shutFlags != 0 {
		g.mu.Unlock()
		return 0, errors.New("write on a closed connection")
	}
	c.wbuf = append(c.wbuf, p...)
	g.mu.Unlock()
	g.kick()
	return len(p), nil
}

// Read reads received bytes, returning io.EOF after the host's SHUTDOWN and
// an error after RST.
func (c *gconn) Read(p []byte) (int, error) {
	g := c.g
	g.mu.Lock()
	defer g.mu.Unlock()
	for c.rbuf.Len() == 0 {
		if c.peerShutSnd {
			return 0, io.EOF
		}
		if c.rst {
			return 0, errors.New("connection reset")
		}
		g.cond.Wait()
	}
	n, _ := c.rbuf.Read(p)
	if !g.onlyAskedCredit {
		c.fwdCnt += uint32(n)
	}
	// Like Linux: tell the host once the space it knows of runs low.
	if !g.onlyAskedCredit && g.bufAlloc-(c.rxCnt-c.lastAdvFwd) < g.bufAlloc/2 {
		c.wantUpdate = true
		g.kick()
	}
	return n, nil
}

// CloseWrite sends SHUTDOWN(SEND) after the queued data.
func (c *gconn) CloseWrite() { c.shut(abi.VsockShutdownSend) }

// Close sends SHUTDOWN(RCV|SEND) after the queued data and waits for the
// host's RST, as Linux's close does.
func (c *gconn) Close() error {
	c.shut(abi.VsockShutdownSend | abi.VsockShutdownRcv)
	g := c.g
	g.mu.Lock()
	defer g.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for !c.rst {
		if time.Now().After(deadline) {
			return errors.New("no RST after SHUTDOWN")
		}
		g.cond.Wait()
	}
	return nil
}

func (c *gconn) shut(flags uint32) {
	c.g.mu.Lock()
	c.shutFlags |= flags
	c.shutSent = false
	c.g.mu.Unlock()
	c.g.kick()
}

// Abort sends RST at once.
func (c *gconn) Abort() {
	g := c.g
	g.mu.Lock()
	g.out = append(g.out, outPkt{c: c, h: g.hdr(c, abi.VsockOpRST, 0)})
	c.state = gClosed
	delete(g.conns, c.key)
	g.mu.Unlock()
	g.kick()
}

// Events returns the event ids received so far.
func (g *guest) Events() []uint32 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]uint32(nil), g.events...)
}

// sendRaw queues a hand-made packet (for malformed-input tests).
func (g *guest) sendRaw(h header, data []byte) {
	g.mu.Lock()
	g.out = append(g.out, outPkt{h: h, data: data})
	g.mu.Unlock()
	g.kick()
}

// newDevice builds a device listening in a fresh directory.
func newDevice(t testing.TB) (*Device, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "vsock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "v.sock")
	d, err := New(Config{GuestCID: guestCID, UDSPath: path}, discard())
	if err != nil {
		t.Fatal(err)
	}
	return d, path
}
