package vsock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio"
)

// firstHostPort is where host-side ports for host-initiated connections
// start (Firecracker's "OK 1073741824").
const firstHostPort = 1 << 30

// maxCtrl bounds queued control packets; while it is reached the loop
// stops taking guest TX packets (which are what generate replies), so a
// guest that never posts receive buffers cannot make the device grow.
const maxCtrl = 1024

type evKind int

const (
	evHostConnect evKind = iota // uc asked for guest port
	evDialed                    // dial for c finished: uc or err
	evHostData                  // reader of c handed over data
	evHostClosed                // reader of c stopped: err (io.EOF when clean)
	evWritten                   // writer of c advanced, or failed with err
	evTimeout                   // c's connect request timed out
)

type event struct {
	kind evKind
	c    *conn
	uc   *net.UnixConn
	port uint32
	data []byte
	err  error
}

// ctrlPkt is a queued packet without payload. For packets of a live
// connection, buf_alloc and fwd_cnt are filled in when it is sent.
type ctrlPkt struct {
	c *conn
	h header
}

// worker is the device's event loop for one activation. Everything below
// "owned by run" is touched only by the run goroutine.
type worker struct {
	d          *Device
	act        virtio.Activation
	log        *slog.Logger
	guestCID   uint64
	rx, tx, ev *virtio.Queue
	needsReset func(error)
	cancel     context.CancelFunc
	done       chan struct{}
	wake       chan struct{}
	wg         sync.WaitGroup // connection readers, writers and dials
	live       atomic.Int32   // len(conns), for observers outside run

	mu sync.Mutex
	// guarded by mu
	events  []event
	stopped bool

	// owned by run
	conns        map[connKey]*conn
	ctrl         []ctrlPkt
	sendable     []*conn
	nextHostPort uint32
	resetEvent   bool
	broken       bool
}

func newWorker(d *Device, a virtio.Activation, resetEvent bool, cancel context.CancelFunc) *worker {
	return &worker{
		d: d, act: a, log: d.log, guestCID: d.cfg.GuestCID,
		rx: a.Queues[abi.VsockQueueRX], tx: a.Queues[abi.VsockQueueTX], ev: a.Queues[abi.VsockQueueEvent],
		needsReset: a.NeedsReset, cancel: cancel,
		done: make(chan struct{}), wake: make(chan struct{}, 1),
		conns: map[connKey]*conn{}, nextHostPort: firstHostPort, resetEvent: resetEvent,
	}
}

func (w *worker) wakeUp() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// post queues an event for the loop; after stop it releases what the
// event carries instead.
func (w *worker) post(ev event) {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		if ev.uc != nil {
			ev.uc.Close()
		}
		return
	}
	w.events = append(w.events, ev)
	w.mu.Unlock()
	w.wakeUp()
}

// stop ends the loop and waits for every goroutine of this activation.
func (w *worker) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
	w.cancel()
	<-w.done
	w.mu.Lock()
	evs := w.events
	w.events = nil
	w.mu.Unlock()
	for _, ev := range evs {
		if ev.uc != nil {
			ev.uc.Close()
		}
	}
}

func (w *worker) run(ctx context.Context) {
	defer close(w.done)
	defer w.teardownAll()
	for {
		w.handleEvents()
		if !w.broken {
			w.processTX(ctx)
			w.fillRX()
			w.sendResetEvent()
		}
		if checkInvariants {
			if err := w.check(); err != nil {
				panic(fmt.Sprintf("virtio-vsock: invariant broken: %v", err))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		}
	}
}

// fail marks the device as needing a reset after the guest broke a queue.
func (w *worker) fail(err error) {
	if !w.broken {
		w.broken = true
		w.needsReset(fmt.Errorf("virtio-vsock: %w", err))
	}
}

func (w *worker) teardownAll() {
	for _, c := range w.conns {
		w.teardown(c)
	}
	w.wg.Wait()
}

func (w *worker) handleEvents() {
	w.mu.Lock()
	evs := w.events
	w.events = nil
	w.mu.Unlock()
	for _, ev := range evs {
		w.handle(ev)
	}
}

func (w *worker) handle(ev event) {
	c := ev.c
	if c != nil && c.closed {
		if ev.uc != nil {
			ev.uc.Close()
		}
		return
	}
	switch ev.kind {
	case evHostConnect:
		w.hostConnect(ev.uc, ev.port)
	case evTimeout:
		switch {
		case c.guestReset:
			w.log.Info("virtio-vsock: host did not take the data of a connection the guest reset", "port", c.key.hostPort)
			w.teardown(c)
		case c.state == stConnecting:
			w.log.Warn("virtio-vsock: guest did not answer a host connection", "port", c.key.guestPort)
			w.reset(c)
		}
	case evDialed:
		if ev.err != nil {
			w.log.Info("virtio-vsock: guest connection refused by the host", "port", c.key.hostPort, "err", ev.err)
			w.reset(c)
			return
		}
		c.uc = ev.uc
		w.establish(c)
		w.queueCtrl(c, abi.VsockOpResponse, 0)
	case evHostData:
		c.inbuf = ev.data
		if c.guestShutRcv {
			w.consumed(c, len(c.inbuf)) // the guest reads no more; discard
			return
		}
		w.markSendable(c)
	case evHostClosed:
		c.hostClosed = true
		if !errors.Is(ev.err, io.EOF) {
			w.log.Info("virtio-vsock: host connection failed", "port", c.key.hostPort, "err", ev.err)
			w.reset(c)
			return
		}
		if !c.guestShutRcv {
			w.queueCtrl(c, abi.VsockOpShutdown, abi.VsockShutdownSend)
		}
		w.maybeFinish(c)
	case evWritten:
		c.progress.Store(false)
		if ev.err != nil {
			w.log.Info("virtio-vsock: writing to host connection", "port", c.key.hostPort, "err", ev.err)
			w.reset(c)
			return
		}
		w.maybeCreditUpdate(c, false)
		w.maybeFinish(c)
	}
}

// hostConnect starts a host-initiated connection to guest port.
func (w *worker) hostConnect(uc *net.UnixConn, port uint32) {
	if len(w.conns) >= maxConns {
		w.log.Warn("virtio-vsock: too many connections; refusing host connection", "limit", maxConns)
		uc.Close()
		return
	}
	for {
		hp := w.nextHostPort
		w.nextHostPort++
		if w.nextHostPort == 0 {
			w.nextHostPort = firstHostPort
		}
		key := connKey{hostPort: hp, guestPort: port}
		if _, used := w.conns[key]; used {
			continue
		}
		c := newConn(key, stConnecting, uc)
		w.addConn(c)
		c.timer = time.AfterFunc(connectTimeout, func() { w.post(event{kind: evTimeout, c: c}) })
		w.queueCtrl(c, abi.VsockOpRequest, 0)
		return
	}
}

// guestConnect starts a guest-initiated connection: dial the host listener
// for the destination port without blocking the loop.
func (w *worker) guestConnect(ctx context.Context, h header) {
	key := connKey{hostPort: h.dstPort, guestPort: h.srcPort}
	if h.typ != abi.VsockTypeStream || len(w.conns) >= maxConns {
		w.log.Warn("virtio-vsock: refusing guest connection", "type", h.typ, "conns", len(w.conns))
		w.queueRST(h)
		return
	}
	c := newConn(key, stDialing, nil)
	c.peerBufAlloc, c.peerFwdCnt = h.bufAlloc, h.fwdCnt
	w.addConn(c)
	path := w.d.cfg.UDSPath + "_" + strconv.FormatUint(uint64(h.dstPort), 10)
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		var d net.Dialer
		dctx, cancel := context.WithTimeout(ctx, connectTimeout)
		defer cancel()
		nc, err := d.DialContext(dctx, "unix", path)
		if err != nil {
			w.post(event{kind: evDialed, c: c, err: err})
			return
		}
		w.post(event{kind: evDialed, c: c, uc: nc.(*net.UnixConn)})
	}()
}

func (w *worker) addConn(c *conn) {
	w.conns[c.key] = c
	w.live.Add(1)
}

// establish starts moving bytes on c.
func (w *worker) establish(c *conn) {
	c.state = stEstablished
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.guestShutSend { // the guest shut down while we were dialing
		c.wq.shutdown()
	}
	w.wg.Add(2)
	go w.readLoop(c)
	go w.writeLoop(c)
}

// reset aborts c: the guest gets RST and the host socket is closed.
func (w *worker) reset(c *conn) {
	w.queueCtrl(c, abi.VsockOpRST, 0)
	w.teardown(c)
}

// teardown forgets c and stops its goroutines.
func (w *worker) teardown(c *conn) {
	if c.closed {
		return
	}
	c.closed = true
	delete(w.conns, c.key)
	w.live.Add(-1)
	if c.timer != nil {
		c.timer.Stop()
	}
	close(c.done)
	if c.uc != nil {
		c.uc.Close()
	}
	c.wq.close()
}

// maybeFinish closes c once both directions are done: the guest will send
// nothing more and all it sent reached the host, and the host will send
// nothing more or the guest will read nothing more.
func (w *worker) maybeFinish(c *conn) {
	if c.closed || c.state != stEstablished || !c.guestShutSend || !c.wq.drainedAndShut() {
		return
	}
	switch {
	case c.guestReset:
		w.teardown(c) // the guest already considers it closed: no RST back
	case c.hostClosed || c.guestShutRcv:
		w.reset(c)
	}
}

// guestReset handles the guest's RST. An established connection first
// writes what the guest sent before the RST to the host (for at most
// lingerTimeout), then closes; the guest reads nothing more.
func (w *worker) guestReset(c *conn) {
	if c.state != stEstablished {
		w.teardown(c)
		return
	}
	c.guestReset, c.guestShutRcv, c.guestShutSend = true, true, true
	if len(c.inbuf) > 0 {
		w.consumed(c, len(c.inbuf))
	}
	c.wq.shutdown()
	c.timer = time.AfterFunc(lingerTimeout, func() { w.post(event{kind: evTimeout, c: c}) })
	w.maybeFinish(c)
}

// consumed records that n bytes of c.inbuf were delivered (or discarded)
// and lets the reader continue once the chunk is gone.
func (w *worker) consumed(c *conn, n int) {
	c.inbuf = c.inbuf[n:]
	if len(c.inbuf) == 0 {
		c.inbuf = nil
		select {
		case c.ack <- struct{}{}:
		default:
		}
	}
}

func (w *worker) markSendable(c *conn) {
	if !c.queued && len(c.inbuf) > 0 {
		c.queued = true
		w.sendable = append(w.sendable, c)
	}
}

func (w *worker) hostHeader(c *conn, op uint16, flags uint32) header {
	return header{
		srcCID: abi.VsockCIDHost, dstCID: w.guestCID,
		srcPort: c.key.hostPort, dstPort: c.key.guestPort,
		typ: abi.VsockTypeStream, op: op, flags: flags,
	}
}

func (w *worker) queueCtrl(c *conn, op uint16, flags uint32) {
	w.ctrl = append(w.ctrl, ctrlPkt{c: c, h: w.hostHeader(c, op, flags)})
}

// queueRST answers a guest packet that belongs to no connection.
func (w *worker) queueRST(h header) {
	w.ctrl = append(w.ctrl, ctrlPkt{h: header{
		srcCID: abi.VsockCIDHost, dstCID: w.guestCID,
		srcPort: h.dstPort, dstPort: h.srcPort,
		typ: abi.VsockTypeStream, op: abi.VsockOpRST,
	}})
}

// maybeCreditUpdate tells the guest about freed buffer space when it asked,
// or when the space it knows of has dropped below half the buffer: early
// enough that a sending guest never runs dry while the update travels.
func (w *worker) maybeCreditUpdate(c *conn, asked bool) {
	fwd := c.fwdCnt.Load()
	if c.updateQueued || c.closed {
		return
	}
	knownFree := bufAlloc - (c.rxCnt - c.advertisedFwd)
	if asked || (fwd != c.advertisedFwd && knownFree < bufAlloc/2) {
		c.updateQueued = true
		w.queueCtrl(c, abi.VsockOpCreditUpdate, 0)
	}
}
