package vsock

import (
	"context"
	"fmt"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio"
)

// processTX handles the guest's packets. It stops early while maxCtrl
// replies are waiting for receive buffers.
func (w *worker) processTX(ctx context.Context) {
	used := false
	for len(w.ctrl) < maxCtrl {
		ch, err := w.tx.Pop()
		if err != nil {
			w.fail(err)
			break
		}
		if ch == nil {
			break
		}
		w.handleTX(ctx, ch)
		if err := w.tx.Push(ch.Head, 0); err != nil {
			w.fail(err)
			break
		}
		used = true
	}
	if used {
		w.tx.Interrupt()
	}
}

func (w *worker) handleTX(ctx context.Context, ch *virtio.Chain) {
	var hb [abi.VsockHdrSize]byte
	if ch.Readable() < abi.VsockHdrSize {
		w.log.Warn("virtio-vsock: dropping TX packet shorter than a header", "bytes", ch.Readable())
		return
	}
	if err := ch.ReadAt(hb[:], 0); err != nil {
		w.log.Warn("virtio-vsock: dropping TX packet", "err", err)
		return
	}
	h, _ := parseHeader(hb[:])
	if err := checkTX(h, w.guestCID, ch.Readable()-abi.VsockHdrSize); err != nil {
		w.log.Warn("virtio-vsock: dropping TX packet", "err", err)
		return
	}
	key := connKey{hostPort: h.dstPort, guestPort: h.srcPort}
	c := w.conns[key]
	if c != nil && c.guestReset {
		// The guest is done with this connection; only its data still
		// drains to the host. A new REQUEST may reuse the ports.
		if h.op != abi.VsockOpRequest {
			return
		}
		w.teardown(c)
		c = nil
	}
	if c == nil {
		switch h.op {
		case abi.VsockOpRequest:
			w.guestConnect(ctx, h)
		case abi.VsockOpRST:
		default:
			w.queueRST(h)
		}
		return
	}
	if h.op != abi.VsockOpRST && h.op != abi.VsockOpRequest {
		c.peerBufAlloc, c.peerFwdCnt = h.bufAlloc, h.fwdCnt
		if c.peerFree() > 0 {
			// Ask again only after the guest granted something, so a
			// stalled reader is not pinged in a loop.
			c.creditRequested = false
		}
		w.markSendable(c)
	}
	switch h.op {
	case abi.VsockOpRST:
		w.guestReset(c)
	case abi.VsockOpResponse:
		if c.state != stConnecting {
			w.reset(c)
			return
		}
		c.wq.push(writeItem{data: []byte("OK " + itoa(c.key.hostPort) + "\n")})
		w.establish(c)
	case abi.VsockOpRW:
		if c.state != stEstablished || c.guestShutSend {
			w.reset(c)
			return
		}
		if h.len == 0 {
			return
		}
		if c.rxCnt-c.fwdCnt.Load()+h.len > bufAlloc {
			w.log.Warn("virtio-vsock: guest overran its credit", "port", c.key.hostPort)
			w.reset(c)
			return
		}
		data := make([]byte, h.len)
		if err := ch.ReadAt(data, abi.VsockHdrSize); err != nil {
			w.reset(c)
			return
		}
		c.rxCnt += h.len
		c.wq.push(writeItem{data: data, counted: true})
	case abi.VsockOpCreditUpdate:
	case abi.VsockOpCreditRequest:
		w.maybeCreditUpdate(c, true)
	case abi.VsockOpShutdown:
		if h.flags&abi.VsockShutdownRcv != 0 && !c.guestShutRcv {
			c.guestShutRcv = true
			if len(c.inbuf) > 0 {
				w.consumed(c, len(c.inbuf))
			}
		}
		if h.flags&abi.VsockShutdownSend != 0 && !c.guestShutSend {
			c.guestShutSend = true
			if c.state == stEstablished {
				c.wq.shutdown()
			}
		}
		w.maybeFinish(c)
	default: // a second REQUEST for a live connection
		w.reset(c)
	}
}

// fillRX writes queued packets into the guest's receive buffers: control
// packets first, then data round-robin over connections with credit.
func (w *worker) fillRX() {
	used := false
	for !w.broken {
		var (
			h    header
			data []byte
			c    *conn
		)
		// Decide before popping a buffer: nextSendable may queue a
		// CREDIT_REQUEST, which must not displace the chosen data.
		isCtrl := len(w.ctrl) > 0
		if isCtrl {
			h, c = w.ctrl[0].h, w.ctrl[0].c
		} else {
			if c = w.nextSendable(); c == nil {
				if len(w.ctrl) > 0 {
					continue // nextSendable queued credit requests
				}
				break
			}
			h = w.hostHeader(c, abi.VsockOpRW, 0)
		}
		ch, err := w.rx.Pop()
		if err != nil {
			w.fail(err)
			break
		}
		if ch == nil {
			if !isCtrl { // put the data connection back, first in line
				w.sendable = append([]*conn{c}, w.sendable...)
				c.queued = true
			}
			break
		}
		if ch.Readable() != 0 || ch.Writable() < abi.VsockHdrSize {
			w.fail(fmt.Errorf("receive buffer %d has %d readable and %d writable bytes; want only writable, at least %d",
				ch.Head, ch.Readable(), ch.Writable(), abi.VsockHdrSize))
			break
		}
		if isCtrl {
			w.ctrl[0] = ctrlPkt{}
			w.ctrl = w.ctrl[1:]
			if c != nil && h.op == abi.VsockOpCreditUpdate {
				c.updateQueued = false
			}
		} else {
			n := min(uint64(len(c.inbuf)), uint64(c.peerFree()), ch.Writable()-abi.VsockHdrSize, maxPayload)
			data = c.inbuf[:n]
			h.len = uint32(n)
			if n == 0 { // a header-only buffer: say something useful instead
				h.op = abi.VsockOpCreditUpdate
			}
		}
		if c != nil {
			h.bufAlloc = bufAlloc
			h.fwdCnt = c.fwdCnt.Load()
			c.advertisedFwd = h.fwdCnt
		}
		var hb [abi.VsockHdrSize]byte
		h.encode(hb[:])
		if err := ch.WriteAt(hb[:], 0); err != nil {
			w.fail(err)
			break
		}
		if len(data) > 0 {
			if err := ch.WriteAt(data, abi.VsockHdrSize); err != nil {
				w.fail(err)
				break
			}
			c.txCnt += h.len
			w.consumed(c, len(data))
		}
		if !isCtrl && len(c.inbuf) > 0 && !c.queued {
			// More to send: back in line. If the guest's credit ran out,
			// nextSendable asks it for an update, since a guest may grant
			// credit only when asked.
			c.queued = true
			w.sendable = append(w.sendable, c)
		}
		if err := w.rx.Push(ch.Head, abi.VsockHdrSize+h.len); err != nil {
			w.fail(err)
			break
		}
		used = true
	}
	if used {
		w.rx.Interrupt()
	}
}

// deliverable reports whether c has data the guest can take now.
func (w *worker) deliverable(c *conn) bool {
	return !c.closed && c.state == stEstablished && len(c.inbuf) > 0 && !c.guestShutRcv && c.peerFree() > 0
}

// nextSendable pops the next connection with deliverable data. A connection
// stalled on credit asks the guest for a credit update, once.
func (w *worker) nextSendable() *conn {
	for len(w.sendable) > 0 {
		c := w.sendable[0]
		w.sendable[0] = nil
		w.sendable = w.sendable[1:]
		c.queued = false
		if w.deliverable(c) {
			return c
		}
		if !c.closed && len(c.inbuf) > 0 && c.peerFree() == 0 && !c.creditRequested {
			c.creditRequested = true
			w.queueCtrl(c, abi.VsockOpCreditRequest, 0)
		}
	}
	return nil
}

// sendResetEvent delivers a pending TRANSPORT_RESET event (after restore).
func (w *worker) sendResetEvent() {
	if !w.resetEvent {
		return
	}
	ch, err := w.ev.Pop()
	if err != nil {
		w.fail(err)
		return
	}
	if ch == nil {
		return
	}
	if ch.Writable() < abi.VsockEventSize {
		w.fail(fmt.Errorf("event buffer %d has %d writable bytes, want %d", ch.Head, ch.Writable(), abi.VsockEventSize))
		return
	}
	var e [abi.VsockEventSize]byte
	le.PutUint32(e[abi.VsockEventOffID:], abi.VsockEventTransportReset)
	if err := ch.WriteAt(e[:], 0); err != nil {
		w.fail(err)
		return
	}
	if err := w.ev.Push(ch.Head, abi.VsockEventSize); err != nil {
		w.fail(err)
		return
	}
	w.resetEvent = false
	w.ev.Interrupt()
}
