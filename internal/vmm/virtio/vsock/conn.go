package vsock

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Per-connection buffering bounds.
const (
	// bufAlloc is the receive buffer the device advertises to the guest for
	// each connection: at most this much guest data waits for a slow host
	// reader.
	bufAlloc = 256 << 10
	// readChunk is the most host data one connection holds while it waits
	// for guest credit or receive buffers.
	readChunk = 64 << 10
	// connectTimeout is how long the guest has to accept a host-initiated
	// connection (Firecracker's value).
	connectTimeout = 2 * time.Second
	// lingerTimeout bounds how long a connection the guest reset keeps
	// writing what the guest sent before the RST to a slow host reader.
	lingerTimeout = 2 * time.Second
	// maxConns bounds live connections (Firecracker's limit), so a guest
	// opening connections in a loop cannot exhaust the host: with bufAlloc
	// each, guest data waiting for host readers stays under 256 MiB.
	maxConns = 1023
)

// connKey names a connection by its two ports; the CIDs are fixed.
type connKey struct {
	hostPort, guestPort uint32
}

type connState int

const (
	stConnecting  connState = iota // host-initiated: REQUEST sent, waiting for the guest
	stDialing                      // guest-initiated: dialing <uds_path>_<port>
	stEstablished                  // bytes flow
)

// conn is one bridged stream. Fields without a comment belong to the
// worker's event loop; the reader and writer goroutines touch only uc,
// done, ack, fwdCnt and wq.
type conn struct {
	key   connKey
	state connState
	uc    *net.UnixConn // owned; closed by teardown
	done  chan struct{} // closed by teardown
	ack   chan struct{} // loop → reader: the last chunk was consumed
	timer *time.Timer
	// host → guest
	inbuf           []byte // chunk the reader handed over, not yet delivered
	hostClosed      bool   // the reader hit EOF
	peerBufAlloc    uint32
	peerFwdCnt      uint32
	txCnt           uint32 // payload bytes sent to the guest
	creditRequested bool
	queued          bool // in worker.sendable
	// guest → host
	wq            writeQueue
	fwdCnt        atomic.Uint32 // payload bytes written to the host (writer)
	progress      atomic.Bool   // a writer progress event is pending
	rxCnt         uint32        // payload bytes received from the guest
	advertisedFwd uint32        // fwd_cnt the guest last heard
	updateQueued  bool
	guestShutRcv  bool
	guestShutSend bool
	guestReset    bool // the guest sent RST; flushing to the host before closing
	closed        bool
}

func newConn(key connKey, st connState, uc *net.UnixConn) *conn {
	c := &conn{key: key, state: st, uc: uc, done: make(chan struct{}), ack: make(chan struct{}, 1)}
	c.wq.cond.L = &c.wq.mu
	return c
}

// peerFree is how many more payload bytes the guest can take (spec
// 5.10.6.3: buf_alloc - (tx_cnt - fwd_cnt)); a guest reporting nonsense
// gets zero.
func (c *conn) peerFree() uint32 {
	inFlight := c.txCnt - c.peerFwdCnt
	if inFlight > c.peerBufAlloc {
		return 0
	}
	return c.peerBufAlloc - inFlight
}

// writeItem is one write to the host socket; counted items are guest
// payload and advance fwd_cnt, the "OK <port>\n" reply is not.
type writeItem struct {
	data    []byte
	counted bool
}

// writeQueue feeds a connection's writer goroutine.
type writeQueue struct {
	mu   sync.Mutex
	cond sync.Cond
	// guarded by mu
	items     []writeItem
	shutWrite bool // half-close the host socket once drained
	shutDone  bool
	closed    bool
}

func (q *writeQueue) push(it writeItem) {
	q.mu.Lock()
	q.items = append(q.items, it)
	q.mu.Unlock()
	q.cond.Signal()
}

func (q *writeQueue) shutdown() {
	q.mu.Lock()
	q.shutWrite = true
	q.mu.Unlock()
	q.cond.Signal()
}

func (q *writeQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.items = nil
	q.mu.Unlock()
	q.cond.Broadcast()
}

// drainedAndShut reports whether the writer has half-closed the socket
// after writing everything.
func (q *writeQueue) drainedAndShut() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.shutDone
}

// readLoop hands host data to the event loop one chunk at a time, waiting
// for each chunk to be consumed before reading more: this is the
// backpressure from guest credit to the host socket.
func (w *worker) readLoop(c *conn) {
	defer w.wg.Done()
	buf := make([]byte, readChunk)
	for {
		n, err := c.uc.Read(buf)
		if n > 0 {
			w.post(event{kind: evHostData, c: c, data: buf[:n]})
			select {
			case <-c.ack:
			case <-c.done:
				return
			}
		}
		if err != nil {
			w.post(event{kind: evHostClosed, c: c, err: err})
			return
		}
	}
}

// writeLoop writes guest data to the host socket in order.
func (w *worker) writeLoop(c *conn) {
	defer w.wg.Done()
	q := &c.wq
	for {
		q.mu.Lock()
		for len(q.items) == 0 && !q.closed && (!q.shutWrite || q.shutDone) {
			q.cond.Wait()
		}
		if q.closed {
			q.mu.Unlock()
			return
		}
		if len(q.items) == 0 {
			q.shutDone = true
			q.mu.Unlock()
			if err := c.uc.CloseWrite(); err != nil {
				w.writeProgress(c, err)
				return
			}
			w.writeProgress(c, nil)
			continue
		}
		it := q.items[0]
		q.items[0] = writeItem{}
		q.items = q.items[1:]
		q.mu.Unlock()
		if _, err := c.uc.Write(it.data); err != nil {
			w.writeProgress(c, err)
			return
		}
		if it.counted {
			c.fwdCnt.Add(uint32(len(it.data)))
			w.writeProgress(c, nil)
		}
	}
}

// writeProgress tells the loop the writer advanced (coalesced) or failed.
func (w *worker) writeProgress(c *conn, err error) {
	if err != nil {
		w.post(event{kind: evWritten, c: c, err: err})
		return
	}
	if !c.progress.Swap(true) {
		w.post(event{kind: evWritten, c: c})
	}
}
