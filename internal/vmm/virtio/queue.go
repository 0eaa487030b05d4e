package virtio

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
)

var le = binary.LittleEndian

// Buffer is one guest buffer of a descriptor chain, already checked to lie
// inside guest memory and to be non-empty.
type Buffer struct {
	Addr  uint64
	Len   uint32
	Write bool // device-writable
}

// Chain is one descriptor chain popped from a queue, with indirect tables
// flattened. Readable buffers come first, then writable ones (spec 2.7.4.2
// requires that order; Pop rejects chains that break it). The buffers were
// copied out of the descriptor table when the chain was popped, so a guest
// rewriting its descriptors afterwards cannot change them.
type Chain struct {
	// Head is the head descriptor index, returned to the driver in the used
	// ring.
	Head uint16
	// Buffers are the chain's buffers, readable ones first.
	Buffers []Buffer
	mem     Memory
}

// Readable returns the total length of the device-readable buffers.
func (c *Chain) Readable() uint64 { return c.total(false) }

// Writable returns the total length of the device-writable buffers.
func (c *Chain) Writable() uint64 { return c.total(true) }

func (c *Chain) total(write bool) uint64 {
	var n uint64
	for _, b := range c.Buffers {
		if b.Write == write {
			n += uint64(b.Len)
		}
	}
	return n
}

// Segments returns the guest memory of bytes [off, off+n) of the chain's
// readable (write=false) or writable (write=true) part, as slices aliasing
// guest memory. It fails if that range is not entirely inside the part.
func (c *Chain) Segments(write bool, off, n uint64) ([][]byte, error) {
	var segs [][]byte
	for _, b := range c.Buffers {
		if n == 0 {
			break
		}
		if b.Write != write {
			continue
		}
		l := uint64(b.Len)
		if off >= l {
			off -= l
			continue
		}
		take := min(l-off, n)
		s, err := c.mem.Slice(b.Addr+off, take)
		if err != nil {
			return nil, fmt.Errorf("buffer at 0x%x: %w", b.Addr, err)
		}
		segs = append(segs, s)
		off = 0
		n -= take
	}
	if n != 0 {
		return nil, fmt.Errorf("%w: chain %d is %d bytes short", ErrMalformed, c.Head, n)
	}
	return segs, nil
}

// ReadAt copies bytes [off, off+len(p)) of the readable part into p.
func (c *Chain) ReadAt(p []byte, off uint64) error {
	segs, err := c.Segments(false, off, uint64(len(p)))
	if err != nil {
		return err
	}
	for _, s := range segs {
		p = p[copy(p, s):]
	}
	return nil
}

// WriteAt copies p into bytes [off, off+len(p)) of the writable part.
func (c *Chain) WriteAt(p []byte, off uint64) error {
	segs, err := c.Segments(true, off, uint64(len(p)))
	if err != nil {
		return err
	}
	for _, s := range segs {
		p = p[copy(s, p):]
	}
	return nil
}

// Queue is one split virtqueue (spec 2.7) as the device sees it. Its layout
// was validated when the driver set DRIVER_OK. A device uses a queue from
// one goroutine at a time; State may be read concurrently.
type Queue struct {
	mem      Memory
	size     uint16
	desc     uint64
	avail    uint64
	used     uint64
	indirect bool
	eventIdx bool // VIRTIO_F_EVENT_IDX negotiated
	signal   func(*Queue)

	fenceWord atomic.Uint32

	mu sync.Mutex
	// guarded by mu
	nextAvail uint16
	nextUsed  uint16
	signalled uint16 // used idx at the last interrupt decision (event idx)
}

// Size returns the queue size the driver chose.
func (q *Queue) Size() uint16 { return q.size }

// fence orders the device's guest-memory accesses around ring index updates
// (the virtio_mb/rmb/wmb of spec 2.7.13 and 2.7.7): a Go atomic operation is
// sequentially consistent, so neither the compiler nor the CPU moves plain
// loads and stores across it.
func (q *Queue) fence() { q.fenceWord.Add(1) }

func (q *Queue) read16(gpa uint64) (uint16, error) {
	b, err := q.mem.Slice(gpa, 2)
	if err != nil {
		return 0, err
	}
	return le.Uint16(b), nil
}

func (q *Queue) availableLocked() (uint16, error) {
	idx, err := q.read16(q.avail + abi.AvailOffIdx)
	if err != nil {
		return 0, fmt.Errorf("reading avail idx: %w", err)
	}
	n := idx - q.nextAvail
	if n > q.size {
		return 0, fmt.Errorf("%w: avail idx %d is %d entries ahead of the device, more than the queue size %d",
			ErrMalformed, idx, n, q.size)
	}
	return n, nil
}

// Pop returns the next available descriptor chain, or nil when there is
// none. An error means the driver published something malformed; the queue
// is then unusable until the device is reset.
func (q *Queue) Pop() (*Chain, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	n, err := q.availableLocked()
	if err != nil {
		return nil, err
	}
	if n == 0 {
		if !q.eventIdx {
			return nil, nil
		}
		// Ask to be notified when the driver publishes entry nextAvail
		// (avail_event, spec 2.7.10), then look again: the driver may
		// have published it before it could see the request.
		b, err := q.mem.Slice(q.used+abi.UsedOffRing+uint64(q.size)*abi.UsedElemSize, 2)
		if err != nil {
			return nil, fmt.Errorf("writing avail_event: %w", err)
		}
		le.PutUint16(b, q.nextAvail)
		q.fence()
		if n, err = q.availableLocked(); err != nil || n == 0 {
			return nil, err
		}
	}
	// The ring entry and the descriptors must be read after the index that
	// published them (spec 2.7.13.2's read barrier on the device side).
	q.fence()
	slot := q.avail + abi.AvailOffRing + uint64(q.nextAvail%q.size)*abi.AvailElemSize
	head, err := q.read16(slot)
	if err != nil {
		return nil, fmt.Errorf("reading avail ring: %w", err)
	}
	c, err := q.walk(head)
	if err != nil {
		return nil, err
	}
	q.nextAvail++
	return c, nil
}

// readDesc reads descriptor i of the table at table.
func (q *Queue) readDesc(table uint64, i uint16) (addr uint64, n uint32, flags, next uint16, err error) {
	b, err := q.mem.Slice(table+uint64(i)*abi.DescSize, abi.DescSize)
	if err != nil {
		return 0, 0, 0, 0, err
	}
	return le.Uint64(b[abi.DescOffAddr:]), le.Uint32(b[abi.DescOffLen:]),
		le.Uint16(b[abi.DescOffFlags:]), le.Uint16(b[abi.DescOffNext:]), nil
}

// walk follows the chain starting at head (spec 2.7.5), checking everything
// the guest controls: indices inside the table, at most size descriptors
// (which catches loops), buffers non-empty and inside guest memory, no
// readable buffer after a writable one, and indirect tables only when
// negotiated, well-sized, not nested and not combined with NEXT.
func (q *Queue) walk(head uint16) (*Chain, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: chain %d: %s", ErrMalformed, head, fmt.Sprintf(format, args...))
	}
	if head >= q.size {
		return nil, bad("head index %d outside queue of size %d", head, q.size)
	}
	c := &Chain{Head: head, mem: q.mem}
	table, tableLen := q.desc, uint32(q.size)
	i, count, inIndirect, writing := head, uint32(0), false, false
	for {
		count++
		if count > tableLen {
			return nil, bad("more than %d descriptors (a loop?)", tableLen)
		}
		addr, n, flags, next, err := q.readDesc(table, i)
		if err != nil {
			return nil, bad("reading descriptor %d: %v", i, err)
		}
		if flags&abi.DescFIndirect != 0 {
			switch {
			case !q.indirect:
				return nil, bad("indirect descriptor %d without VIRTIO_F_INDIRECT_DESC", i)
			case inIndirect:
				return nil, bad("nested indirect descriptor %d", i)
			case flags&abi.DescFNext != 0:
				return nil, bad("descriptor %d sets both INDIRECT and NEXT", i)
			case n == 0 || n%abi.DescSize != 0:
				return nil, bad("indirect table length %d is not a non-zero multiple of %d", n, abi.DescSize)
			case n/abi.DescSize > abi.MaxQueueSize:
				return nil, bad("indirect table of %d descriptors exceeds %d", n/abi.DescSize, abi.MaxQueueSize)
			}
			if _, err := q.mem.Slice(addr, uint64(n)); err != nil {
				return nil, bad("indirect table at 0x%x+%d: %v", addr, n, err)
			}
			table, tableLen, i, count, inIndirect = addr, n/abi.DescSize, 0, 0, true
			continue
		}
		if n == 0 {
			return nil, bad("descriptor %d has zero length", i)
		}
		if _, err := q.mem.Slice(addr, uint64(n)); err != nil {
			return nil, bad("descriptor %d buffer 0x%x+%d: %v", i, addr, n, err)
		}
		w := flags&abi.DescFWrite != 0
		if writing && !w {
			return nil, bad("readable descriptor %d after a writable one", i)
		}
		writing = w
		c.Buffers = append(c.Buffers, Buffer{Addr: addr, Len: n, Write: w})
		if flags&abi.DescFNext == 0 {
			return c, nil
		}
		if uint32(next) >= tableLen {
			return nil, bad("descriptor %d's next %d outside table of %d", i, next, tableLen)
		}
		i = next
	}
}

// Push returns chain head to the driver with written bytes written into its
// writable buffers (spec 2.7.8). Call Interrupt after a batch of pushes.
func (q *Queue) Push(head uint16, written uint32) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.nextAvail == q.nextUsed {
		return fmt.Errorf("returning chain %d: the device holds no popped chain (device bug)", head)
	}
	elem := q.used + abi.UsedOffRing + uint64(q.nextUsed%q.size)*abi.UsedElemSize
	b, err := q.mem.Slice(elem, abi.UsedElemSize)
	if err != nil {
		return fmt.Errorf("writing used ring: %w", err)
	}
	le.PutUint32(b[abi.UsedElemOffID:], uint32(head))
	le.PutUint32(b[abi.UsedElemOffLen:], written)
	// The element must be visible before the index that publishes it
	// (spec 2.7.8.2 via 2.7.13's write barrier).
	q.fence()
	q.nextUsed++
	idx, err := q.mem.Slice(q.used+abi.UsedOffIdx, 2)
	if err != nil {
		return fmt.Errorf("writing used idx: %w", err)
	}
	le.PutUint16(idx, q.nextUsed)
	return nil
}

// Interrupt sends a used buffer notification unless the driver suppressed
// it: with VIRTIO_F_EVENT_IDX, unless the used index did not pass the
// driver's used_event since the last decision; otherwise, when the driver
// set VIRTQ_AVAIL_F_NO_INTERRUPT (spec 2.7.10).
func (q *Queue) Interrupt() {
	// The used idx store must be ordered before the flags or used_event
	// load (spec 2.7.10's full barrier), or the driver may miss the update.
	q.fence()
	if q.eventIdx {
		q.mu.Lock()
		old, next := q.signalled, q.nextUsed
		q.signalled = next
		q.mu.Unlock()
		ev, err := q.read16(q.avail + abi.AvailOffRing + uint64(q.size)*abi.AvailElemSize)
		// vring_need_event: did the used index cross used_event?
		if err == nil && next-ev-1 < next-old {
			q.signal(q)
		}
		return
	}
	flags, err := q.read16(q.avail + abi.AvailOffFlags)
	if err == nil && flags&abi.AvailFNoInterrupt != 0 {
		return
	}
	q.signal(q)
}
