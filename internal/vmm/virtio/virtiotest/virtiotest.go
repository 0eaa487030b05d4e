// Package virtiotest plays a guest against the VMM's virtio devices without
// KVM: Mem is guest RAM in a byte slice, IRQ counts interrupts, and Driver
// programs a virtio-mmio transport and lays out split virtqueues the way a
// guest driver does (spec 3.1 and 2.7), including deliberately malformed
// descriptors for tests that check the device survives them.
package virtiotest

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
)

var le = binary.LittleEndian

// Mem is guest RAM [Base, Base+len(Bytes)) held in a byte slice. It
// satisfies virtio.Memory.
type Mem struct {
	Base  uint64
	Bytes []byte
}

// NewMem returns size bytes of zeroed guest RAM starting at base, mapped
// anonymously like the VMM's real guest memory and unmapped when t ends.
// Memory outside the Go heap is also invisible to the race detector, as
// real guest memory is: a test guest and a device share it the way a vCPU
// and the VMM do, ordered by the ring protocol rather than by Go
// synchronisation.
func NewMem(t testing.TB, base uint64, size int) *Mem {
	t.Helper()
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatalf("mapping %d bytes of test guest memory: %v", size, err)
	}
	t.Cleanup(func() {
		if err := unix.Munmap(b); err != nil {
			t.Errorf("unmapping test guest memory: %v", err)
		}
	})
	return &Mem{Base: base, Bytes: b}
}

// Slice returns guest RAM [gpa, gpa+n) aliasing m.Bytes.
func (m *Mem) Slice(gpa, n uint64) ([]byte, error) {
	end := gpa + n
	if gpa < m.Base || end < gpa || end-m.Base > uint64(len(m.Bytes)) {
		return nil, fmt.Errorf("guest range [0x%x, 0x%x) outside RAM [0x%x, 0x%x)", gpa, gpa+n, m.Base, m.Base+uint64(len(m.Bytes)))
	}
	return m.Bytes[gpa-m.Base : end-m.Base : end-m.Base], nil
}

// IRQ counts Trigger calls and wakes one waiter per call.
type IRQ struct {
	n atomic.Uint64
	C chan struct{}
}

// NewIRQ returns an IRQ whose channel holds one pending wake-up.
func NewIRQ() *IRQ { return &IRQ{C: make(chan struct{}, 1)} }

// Trigger records an interrupt.
func (i *IRQ) Trigger() error {
	i.n.Add(1)
	select {
	case i.C <- struct{}{}:
	default:
	}
	return nil
}

// Count returns how many interrupts were raised.
func (i *IRQ) Count() uint64 { return i.n.Load() }

// Transport is what the driver talks to: a virtio-mmio window.
type Transport interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

// Driver is a guest-side virtio-mmio driver for tests.
type Driver struct {
	T      testing.TB
	Dev    Transport
	Mem    *Mem
	IRQ    *IRQ
	Queues []*Queue
	next   uint64 // bump allocator, guest-physical
	feats  uint64 // features the driver accepted
}

// NewDriver returns a driver for dev whose allocations start at the
// beginning of mem.
func NewDriver(t testing.TB, dev Transport, mem *Mem, irq *IRQ) *Driver {
	return &Driver{T: t, Dev: dev, Mem: mem, IRQ: irq, next: mem.Base}
}

// Read32 reads a transport register.
func (d *Driver) Read32(off uint64) uint32 {
	var b [4]byte
	d.Dev.Read(off, b[:])
	return le.Uint32(b[:])
}

// Write32 writes a transport register.
func (d *Driver) Write32(off uint64, v uint32) {
	var b [4]byte
	le.PutUint32(b[:], v)
	d.Dev.Write(off, b[:])
}

// Alloc reserves n zeroed bytes of guest RAM aligned to align and returns
// their guest-physical address; it fails the test when RAM runs out.
func (d *Driver) Alloc(n, align uint64) uint64 {
	d.T.Helper()
	a := (d.next + align - 1) &^ (align - 1)
	if a+n > d.Mem.Base+uint64(len(d.Mem.Bytes)) {
		d.T.Fatalf("test guest RAM exhausted allocating %d bytes", n)
	}
	d.next = a + n
	clear(d.Bytes(a, n)) // like a guest allocator: rings and buffers start zeroed
	return a
}

// Mark returns the allocator's position, for Release.
func (d *Driver) Mark() uint64 { return d.next }

// Release frees everything allocated since Mark returned m. Only buffers
// the device no longer holds may be released.
func (d *Driver) Release(m uint64) { d.next = m }

// Bytes returns guest RAM at gpa, failing the test if it is outside RAM.
func (d *Driver) Bytes(gpa, n uint64) []byte {
	d.T.Helper()
	b, err := d.Mem.Slice(gpa, n)
	if err != nil {
		d.T.Fatal(err)
	}
	return b
}

// DeviceFeatures reads all 64 offered feature bits.
func (d *Driver) DeviceFeatures() uint64 {
	d.Write32(abi.MMIODeviceFeaturesSel, 0)
	lo := d.Read32(abi.MMIODeviceFeatures)
	d.Write32(abi.MMIODeviceFeaturesSel, 1)
	hi := d.Read32(abi.MMIODeviceFeatures)
	return uint64(hi)<<32 | uint64(lo)
}

// Negotiate runs spec 3.1.1 steps 1–6 accepting features and reports
// whether the device kept FEATURES_OK set.
func (d *Driver) Negotiate(features uint64) bool {
	d.feats = features
	d.Write32(abi.MMIOStatus, 0)
	d.Write32(abi.MMIOStatus, abi.StatusAcknowledge)
	d.Write32(abi.MMIOStatus, abi.StatusAcknowledge|abi.StatusDriver)
	d.Write32(abi.MMIODriverFeaturesSel, 0)
	d.Write32(abi.MMIODriverFeatures, uint32(features))
	d.Write32(abi.MMIODriverFeaturesSel, 1)
	d.Write32(abi.MMIODriverFeatures, uint32(features>>32))
	d.Write32(abi.MMIOStatus, abi.StatusAcknowledge|abi.StatusDriver|abi.StatusFeaturesOK)
	return d.Read32(abi.MMIOStatus)&abi.StatusFeaturesOK != 0
}

// Init negotiates features, sets up one queue of each given size (0 leaves
// that queue disabled) and sets DRIVER_OK.
func (d *Driver) Init(features uint64, sizes ...uint16) {
	d.T.Helper()
	if !d.Negotiate(features) {
		d.T.Fatalf("device refused features 0x%x (offers 0x%x)", features, d.DeviceFeatures())
	}
	d.Queues = make([]*Queue, len(sizes))
	for i, n := range sizes {
		if n == 0 {
			continue
		}
		d.Queues[i] = d.SetupQueue(i, n)
	}
	d.Write32(abi.MMIOStatus, abi.StatusAcknowledge|abi.StatusDriver|abi.StatusFeaturesOK|abi.StatusDriverOK)
	if s := d.Read32(abi.MMIOStatus); s&abi.StatusDeviceNeedsReset != 0 {
		d.T.Fatalf("device status 0x%x after DRIVER_OK: needs reset", s)
	}
}

// SetupQueue allocates and programs queue i with n entries and marks it
// ready (spec 4.2.3.2).
func (d *Driver) SetupQueue(i int, n uint16) *Queue {
	d.T.Helper()
	ev := d.feats&(1<<abi.FEventIdx) != 0
	q := &Queue{d: d, Index: i, Size: n, chains: map[uint16][]uint16{}, AutoUsedEvent: ev, SuppressKicks: ev}
	q.Desc = d.Alloc(uint64(n)*abi.DescSize, abi.DescAlign)
	q.Avail = d.Alloc(abi.AvailOffRing+uint64(n)*abi.AvailElemSize+2, abi.AvailAlign)
	q.UsedRing = d.Alloc(abi.UsedOffRing+uint64(n)*abi.UsedElemSize+2, abi.UsedAlign)
	for j := range n {
		q.free = append(q.free, j)
	}
	d.Write32(abi.MMIOQueueSel, uint32(i))
	if max := d.Read32(abi.MMIOQueueNumMax); uint32(n) > max {
		d.T.Fatalf("queue %d: size %d exceeds QueueNumMax %d", i, n, max)
	}
	d.Write32(abi.MMIOQueueNum, uint32(n))
	d.Write32(abi.MMIOQueueDescLow, uint32(q.Desc))
	d.Write32(abi.MMIOQueueDescHigh, uint32(q.Desc>>32))
	d.Write32(abi.MMIOQueueDriverLow, uint32(q.Avail))
	d.Write32(abi.MMIOQueueDriverHigh, uint32(q.Avail>>32))
	d.Write32(abi.MMIOQueueDeviceLow, uint32(q.UsedRing))
	d.Write32(abi.MMIOQueueDeviceHigh, uint32(q.UsedRing>>32))
	d.Write32(abi.MMIOQueueReady, 1)
	return q
}

// Buf is one buffer of a chain the driver adds.
type Buf struct {
	Addr  uint64
	Len   uint32
	Write bool
}

// Readable allocates a device-readable buffer holding data.
func (d *Driver) Readable(data []byte) Buf {
	a := d.Alloc(uint64(len(data)), 8)
	copy(d.Bytes(a, uint64(len(data))), data)
	return Buf{Addr: a, Len: uint32(len(data))}
}

// Writable allocates a zeroed device-writable buffer of n bytes.
func (d *Driver) Writable(n uint32) Buf {
	return Buf{Addr: d.Alloc(uint64(n), 8), Len: n, Write: true}
}

// Queue is the driver's view of one split virtqueue.
type Queue struct {
	d                     *Driver
	Index                 int
	Size                  uint16
	Desc, Avail, UsedRing uint64
	free                  []uint16
	chains                map[uint16][]uint16
	availIdx              uint16
	usedSeen              uint16
	// AutoUsedEvent makes Used ask for an interrupt on the next used
	// buffer (used_event = what was consumed), as Linux does with
	// VIRTIO_F_EVENT_IDX; SetupQueue sets it when that feature was accepted.
	AutoUsedEvent bool
	// SuppressKicks makes Kick notify only when the device asked for it
	// through avail_event (VIRTIO_F_EVENT_IDX), as Linux does; set with
	// AutoUsedEvent. Tests of a device's avail_event rely on it.
	SuppressKicks bool
	kicked        uint16 // avail idx at the last Kick decision
	fenceWord     atomic.Uint32
}

// SetUsedEvent writes used_event, the used index after which the driver
// wants an interrupt (VIRTIO_F_EVENT_IDX, spec 2.7.10).
func (q *Queue) SetUsedEvent(v uint16) {
	le.PutUint16(q.d.Bytes(q.Avail+abi.AvailOffRing+uint64(q.Size)*abi.AvailElemSize, 2), v)
}

// AvailEvent reads avail_event, the available index after which the
// device wants a notification (VIRTIO_F_EVENT_IDX).
func (q *Queue) AvailEvent() uint16 {
	return le.Uint16(q.d.Bytes(q.UsedRing+abi.UsedOffRing+uint64(q.Size)*abi.UsedElemSize, 2))
}

// SetDesc writes descriptor i verbatim (tests use it for malformed chains).
func (q *Queue) SetDesc(i uint16, addr uint64, n uint32, flags, next uint16) {
	b := q.d.Bytes(q.Desc+uint64(i)*abi.DescSize, abi.DescSize)
	le.PutUint64(b[abi.DescOffAddr:], addr)
	le.PutUint32(b[abi.DescOffLen:], n)
	le.PutUint16(b[abi.DescOffFlags:], flags)
	le.PutUint16(b[abi.DescOffNext:], next)
}

// Publish puts head in the available ring and advances its index.
func (q *Queue) Publish(head uint16) {
	le.PutUint16(q.d.Bytes(q.Avail+abi.AvailOffRing+uint64(q.availIdx%q.Size)*2, 2), head)
	q.availIdx++
	le.PutUint16(q.d.Bytes(q.Avail+abi.AvailOffIdx, 2), q.availIdx)
}

// SetAvailIdx overwrites the available index (for malformed-ring tests).
func (q *Queue) SetAvailIdx(v uint16) {
	q.availIdx = v
	le.PutUint16(q.d.Bytes(q.Avail+abi.AvailOffIdx, 2), v)
}

// SetAvailFlags writes the available ring's flags.
func (q *Queue) SetAvailFlags(v uint16) {
	le.PutUint16(q.d.Bytes(q.Avail+abi.AvailOffFlags, 2), v)
}

// Free returns how many descriptors are unused.
func (q *Queue) Free() int { return len(q.free) }

// Add writes bufs as one chain from free descriptors and publishes it; it
// returns the head, or false when too few descriptors are free.
func (q *Queue) Add(bufs ...Buf) (uint16, bool) {
	if len(bufs) == 0 || len(bufs) > len(q.free) {
		return 0, false
	}
	ids := append([]uint16(nil), q.free[:len(bufs)]...)
	q.free = q.free[len(bufs):]
	for k, b := range bufs {
		var flags, next uint16
		if b.Write {
			flags |= abi.DescFWrite
		}
		if k+1 < len(bufs) {
			flags |= abi.DescFNext
			next = ids[k+1]
		}
		q.SetDesc(ids[k], b.Addr, b.Len, flags, next)
	}
	q.chains[ids[0]] = ids
	q.Publish(ids[0])
	return ids[0], true
}

// AddIndirect writes bufs into a new indirect table and publishes a chain
// of one INDIRECT descriptor pointing at it.
func (q *Queue) AddIndirect(bufs ...Buf) (uint16, bool) {
	if len(q.free) == 0 {
		return 0, false
	}
	table := q.d.Alloc(uint64(len(bufs))*abi.DescSize, abi.DescAlign)
	for k, b := range bufs {
		var flags, next uint16
		if b.Write {
			flags |= abi.DescFWrite
		}
		if k+1 < len(bufs) {
			flags |= abi.DescFNext
			next = uint16(k + 1)
		}
		e := q.d.Bytes(table+uint64(k)*abi.DescSize, abi.DescSize)
		le.PutUint64(e[abi.DescOffAddr:], b.Addr)
		le.PutUint32(e[abi.DescOffLen:], b.Len)
		le.PutUint16(e[abi.DescOffFlags:], flags)
		le.PutUint16(e[abi.DescOffNext:], next)
	}
	id := q.free[0]
	q.free = q.free[1:]
	q.SetDesc(id, table, uint32(len(bufs))*abi.DescSize, abi.DescFIndirect, 0)
	q.chains[id] = []uint16{id}
	q.Publish(id)
	return id, true
}

// Outstanding reports whether chain head was added and not yet used.
func (q *Queue) Outstanding(head uint16) bool {
	_, ok := q.chains[head]
	return ok
}

// Kick notifies the device that the queue has new buffers, unless
// SuppressKicks is set and the device's avail_event says it is not waiting
// for any of the entries published since the last Kick.
func (q *Queue) Kick() {
	if q.SuppressKicks {
		// The avail idx store must be visible before avail_event is read
		// (spec 2.7.13.4's full barrier), pairing with the device's.
		q.fenceWord.Add(1)
		old, next := q.kicked, q.availIdx
		q.kicked = next
		if ev := q.AvailEvent(); next-ev-1 >= next-old { // !vring_need_event
			return
		}
	}
	q.d.Write32(abi.MMIOQueueNotify, uint32(q.Index))
}

// UsedIdx reads the device's used index.
func (q *Queue) UsedIdx() uint16 { return le.Uint16(q.d.Bytes(q.UsedRing+abi.UsedOffIdx, 2)) }

// Used consumes the next used element, freeing its descriptors; ok is
// false when the device has not used anything new.
func (q *Queue) Used() (head uint16, n uint32, ok bool) {
	if q.UsedIdx() == q.usedSeen {
		return 0, 0, false
	}
	e := q.d.Bytes(q.UsedRing+abi.UsedOffRing+uint64(q.usedSeen%q.Size)*abi.UsedElemSize, abi.UsedElemSize)
	q.usedSeen++
	if q.AutoUsedEvent {
		q.SetUsedEvent(q.usedSeen)
	}
	id, n := le.Uint32(e[abi.UsedElemOffID:]), le.Uint32(e[abi.UsedElemOffLen:])
	if ids, found := q.chains[uint16(id)]; found {
		q.free = append(q.free, ids...)
		delete(q.chains, uint16(id))
	} else {
		q.d.T.Errorf("queue %d: device used id %d, which is not an outstanding chain head", q.Index, id)
	}
	return uint16(id), n, true
}

// WaitUsed waits up to timeout for the next used element, sleeping on the
// driver's IRQ between checks.
func (q *Queue) WaitUsed(timeout time.Duration) (head uint16, n uint32) {
	q.d.T.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if h, n, ok := q.Used(); ok {
			return h, n
		}
		select {
		case <-q.d.IRQ.C:
		case <-time.After(10 * time.Millisecond):
		case <-deadline.C:
			q.d.T.Fatalf("queue %d: nothing used within %v", q.Index, timeout)
		}
	}
}
