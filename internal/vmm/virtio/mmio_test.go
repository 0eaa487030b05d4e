package virtio

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"sync"
	"testing"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio/virtiotest"
)

// echoDev copies each chain's readable bytes into its writable buffers. It
// is the smallest device that exercises every transport and queue path.
type echoDev struct {
	mu          sync.Mutex
	act         *Activation
	activations int
	resets      int
	closed      bool
	config      [8]byte
}

const echoFeature = 1 << 3 // a device-specific bit

func (e *echoDev) DeviceID() uint32 { return 42 }
func (e *echoDev) Features() uint64 {
	return echoFeature | 1<<abi.FIndirectDesc | 1<<abi.FEventIdx | 1<<abi.FRingPacked
}
func (e *echoDev) QueueMaxSizes() []uint16 { return []uint16{16, 8} }
func (e *echoDev) ReadConfig(off uint64, data []byte) {
	if off < uint64(len(e.config)) {
		copy(data, e.config[off:])
	}
}
func (e *echoDev) WriteConfig(off uint64, data []byte) {
	if off < uint64(len(e.config)) {
		copy(e.config[off:], data)
	}
}
func (e *echoDev) Activate(a Activation) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.act = &a
	e.activations++
	return nil
}
func (e *echoDev) Notify(i int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.act == nil {
		return
	}
	q := e.act.Queues[i]
	for {
		c, err := q.Pop()
		if err != nil {
			e.act.NeedsReset(err)
			return
		}
		if c == nil {
			break
		}
		n := min(c.Readable(), c.Writable())
		buf := make([]byte, n)
		if err := c.ReadAt(buf, 0); err != nil {
			e.act.NeedsReset(err)
			return
		}
		if err := c.WriteAt(buf, 0); err != nil {
			e.act.NeedsReset(err)
			return
		}
		if err := q.Push(c.Head, uint32(n)); err != nil {
			e.act.NeedsReset(err)
			return
		}
	}
	q.Interrupt()
}
func (e *echoDev) Reset() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.act = nil
	e.resets++
}
func (e *echoDev) Close() error { e.closed = true; return nil }

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

type rig struct {
	dev  *echoDev
	mmio *MMIO
	mem  *virtiotest.Mem
	irq  *virtiotest.IRQ
	drv  *virtiotest.Driver
}

const ramBase = 0x10000

func newRig(t *testing.T) *rig {
	t.Helper()
	r := &rig{dev: &echoDev{}, mem: virtiotest.NewMem(t, ramBase, 1<<20), irq: virtiotest.NewIRQ()}
	r.mmio = NewMMIO(r.dev, r.mem, r.irq, discard())
	r.drv = virtiotest.NewDriver(t, r.mmio, r.mem, r.irq)
	t.Cleanup(func() {
		if err := r.mmio.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if !r.dev.closed {
			t.Error("Close did not close the device")
		}
	})
	return r
}

const v1 = 1 << abi.FVersion1

func (r *rig) status() uint32 { return r.drv.Read32(abi.MMIOStatus) }

func TestIdentification(t *testing.T) {
	r := newRig(t)
	for _, tt := range []struct {
		name string
		off  uint64
		want uint32
	}{
		{"magic", abi.MMIOMagicValue, abi.MMIOMagic},
		{"version", abi.MMIOVersion, 2},
		{"device id", abi.MMIODeviceID, 42},
		{"vendor id", abi.MMIOVendorID, VendorID},
		{"shm len low (no regions)", abi.MMIOSHMLenLow, 0xffffffff},
	} {
		if got := r.drv.Read32(tt.off); got != tt.want {
			t.Errorf("%s: got 0x%x, want 0x%x", tt.name, got, tt.want)
		}
	}
}

func TestFeatureNegotiation(t *testing.T) {
	r := newRig(t)
	offered := r.drv.DeviceFeatures()
	if want := uint64(echoFeature | 1<<abi.FIndirectDesc | 1<<abi.FEventIdx | v1); offered != want {
		t.Errorf("offered features 0x%x, want 0x%x (VERSION_1 added, RING_PACKED hidden)", offered, want)
	}
	for _, tt := range []struct {
		name     string
		features uint64
		ok       bool
	}{
		{"version 1 only", v1, true},
		{"all offered", offered, true},
		{"legacy driver without VERSION_1", echoFeature, false},
		{"unoffered RING_PACKED", v1 | 1<<abi.FRingPacked, false},
		{"unoffered bit 63", v1 | 1<<63, false},
	} {
		if got := r.drv.Negotiate(tt.features); got != tt.ok {
			t.Errorf("%s: FEATURES_OK kept = %v, want %v", tt.name, got, tt.ok)
		}
	}
	r.drv.Write32(abi.MMIODeviceFeaturesSel, 7)
	if got := r.drv.Read32(abi.MMIODeviceFeatures); got != 0 {
		t.Errorf("feature word 7: got 0x%x, want 0", got)
	}
}

func TestEcho(t *testing.T) {
	r := newRig(t)
	r.drv.Init(v1, 16, 8)
	if r.dev.activations != 1 {
		t.Fatalf("activations: got %d, want 1", r.dev.activations)
	}
	q := r.drv.Queues[0]
	for i := range 40 { // more than the queue size: ring indices wrap
		msg := []byte{byte(i), 'h', 'e', 'l', 'l', 'o'}
		in := r.drv.Readable(msg[:3])
		in2 := r.drv.Readable(msg[3:])
		out := r.drv.Writable(2)
		out2 := r.drv.Writable(32)
		head, _ := q.Add(in, in2, out, out2)
		before := r.irq.Count()
		q.Kick()
		h, n, ok := q.Used()
		if !ok || h != head || n != uint32(len(msg)) {
			t.Fatalf("round %d: used (%d, %d, %v), want (%d, %d, true)", i, h, n, ok, head, len(msg))
		}
		got := append(append([]byte{}, r.drv.Bytes(out.Addr, 2)...), r.drv.Bytes(out2.Addr, 4)...)
		if !bytes.Equal(got, msg) {
			t.Fatalf("round %d: echoed %q, want %q", i, got, msg)
		}
		if r.irq.Count() != before+1 {
			t.Fatalf("round %d: %d interrupts, want 1", i, r.irq.Count()-before)
		}
	}
	if got := r.drv.Read32(abi.MMIOInterruptStatus); got != abi.InterruptUsedBuffer {
		t.Errorf("interrupt status 0x%x, want 0x%x", got, abi.InterruptUsedBuffer)
	}
	r.drv.Write32(abi.MMIOInterruptACK, abi.InterruptUsedBuffer)
	if got := r.drv.Read32(abi.MMIOInterruptStatus); got != 0 {
		t.Errorf("interrupt status after ack 0x%x, want 0", got)
	}
}

func TestIndirect(t *testing.T) {
	r := newRig(t)
	r.drv.Init(v1|1<<abi.FIndirectDesc, 16, 8)
	q := r.drv.Queues[1]
	in := r.drv.Readable([]byte("indirect"))
	out := r.drv.Writable(8)
	head, _ := q.AddIndirect(in, out)
	q.Kick()
	if h, n, ok := q.Used(); !ok || h != head || n != 8 {
		t.Fatalf("used (%d, %d, %v), want (%d, 8, true)", h, n, ok, head)
	}
	if got := string(r.drv.Bytes(out.Addr, 8)); got != "indirect" {
		t.Errorf("echoed %q, want %q", got, "indirect")
	}
}

func TestNoInterruptFlag(t *testing.T) {
	r := newRig(t)
	r.drv.Init(v1, 16, 8)
	q := r.drv.Queues[0]
	q.SetAvailFlags(abi.AvailFNoInterrupt)
	q.Add(r.drv.Readable([]byte("x")), r.drv.Writable(1))
	q.Kick()
	if _, _, ok := q.Used(); !ok {
		t.Fatal("chain not used")
	}
	if got := r.irq.Count(); got != 0 {
		t.Errorf("interrupts with NO_INTERRUPT set: got %d, want 0", got)
	}
}

// TestMalformedChains publishes every kind of broken chain we could think
// of. Each must leave the device in DEVICE_NEEDS_RESET with a configuration
// interrupt, touch nothing outside the chain, and work again after a reset.
func TestMalformedChains(t *testing.T) {
	const (
		next     = abi.DescFNext
		write    = abi.DescFWrite
		indirect = abi.DescFIndirect
	)
	type setup func(r *rig, q *virtiotest.Queue)
	buf := func(r *rig) uint64 { return r.drv.Alloc(64, 8) }
	// table writes an indirect table of (addr, len, flags, next) entries.
	table := func(r *rig, entries ...[4]uint64) uint64 {
		a := r.drv.Alloc(uint64(len(entries))*16, 16)
		for i, e := range entries {
			b := r.drv.Bytes(a+uint64(i)*16, 16)
			le.PutUint64(b, e[0])
			le.PutUint32(b[8:], uint32(e[1]))
			le.PutUint16(b[12:], uint16(e[2]))
			le.PutUint16(b[14:], uint16(e[3]))
		}
		return a
	}
	ramEnd := uint64(ramBase + 1<<20)
	cases := []struct {
		name string
		set  setup
	}{
		{"head index past the table", func(r *rig, q *virtiotest.Queue) { q.Publish(16) }},
		{"next index past the table", func(r *rig, q *virtiotest.Queue) {
			q.SetDesc(0, buf(r), 8, next, 99)
			q.Publish(0)
		}},
		{"self loop", func(r *rig, q *virtiotest.Queue) {
			q.SetDesc(3, buf(r), 8, next, 3)
			q.Publish(3)
		}},
		{"two-descriptor loop", func(r *rig, q *virtiotest.Queue) {
			b := buf(r)
			q.SetDesc(0, b, 8, next, 1)
			q.SetDesc(1, b, 8, next, 0)
			q.Publish(0)
		}},
		{"loop through the whole table", func(r *rig, q *virtiotest.Queue) {
			b := buf(r)
			for i := range uint16(16) {
				q.SetDesc(i, b, 8, next, (i+1)%16)
			}
			q.Publish(0)
		}},
		{"zero-length buffer", func(r *rig, q *virtiotest.Queue) {
			q.SetDesc(0, buf(r), 0, 0, 0)
			q.Publish(0)
		}},
		{"buffer past the end of RAM", func(r *rig, q *virtiotest.Queue) {
			q.SetDesc(0, ramEnd-4, 8, 0, 0)
			q.Publish(0)
		}},
		{"buffer below RAM", func(r *rig, q *virtiotest.Queue) {
			q.SetDesc(0, 0x100, 8, 0, 0)
			q.Publish(0)
		}},
		{"address plus length wraps", func(r *rig, q *virtiotest.Queue) {
			q.SetDesc(0, ^uint64(0)-3, 8, 0, 0)
			q.Publish(0)
		}},
		{"readable after writable", func(r *rig, q *virtiotest.Queue) {
			q.SetDesc(0, buf(r), 8, next|write, 1)
			q.SetDesc(1, buf(r), 8, 0, 0)
			q.Publish(0)
		}},
		{"avail idx far ahead", func(r *rig, q *virtiotest.Queue) { q.SetAvailIdx(17) }},
		{"avail idx behind (wrapped backwards)", func(r *rig, q *virtiotest.Queue) { q.SetAvailIdx(0xffff) }},
		{"indirect without the feature", func(r *rig, q *virtiotest.Queue) {
			q.SetDesc(0, table(r, [4]uint64{buf(r), 8, 0, 0}), 16, indirect, 0)
			q.Publish(0)
		}},
	}
	withIndirect := []struct {
		name string
		set  setup
	}{
		{"indirect with next", func(r *rig, q *virtiotest.Queue) {
			q.SetDesc(0, table(r, [4]uint64{buf(r), 8, 0, 0}), 16, indirect|next, 1)
			q.SetDesc(1, buf(r), 8, 0, 0)
			q.Publish(0)
		}},
		{"nested indirect", func(r *rig, q *virtiotest.Queue) {
			inner := table(r, [4]uint64{buf(r), 8, 0, 0})
			q.SetDesc(0, table(r, [4]uint64{inner, 16, indirect, 0}), 16, indirect, 0)
			q.Publish(0)
		}},
		{"indirect length not a multiple of 16", func(r *rig, q *virtiotest.Queue) {
			q.SetDesc(0, table(r, [4]uint64{buf(r), 8, 0, 0}), 15, indirect, 0)
			q.Publish(0)
		}},
		{"indirect table of zero length", func(r *rig, q *virtiotest.Queue) {
			q.SetDesc(0, buf(r), 0, indirect, 0)
			q.Publish(0)
		}},
		{"indirect table outside RAM", func(r *rig, q *virtiotest.Queue) {
			q.SetDesc(0, ramEnd-16, 32, indirect, 0)
			q.Publish(0)
		}},
		{"loop inside an indirect table", func(r *rig, q *virtiotest.Queue) {
			b := buf(r)
			q.SetDesc(0, table(r, [4]uint64{b, 8, next, 1}, [4]uint64{b, 8, next, 0}), 32, indirect, 0)
			q.Publish(0)
		}},
		{"next past an indirect table", func(r *rig, q *virtiotest.Queue) {
			q.SetDesc(0, table(r, [4]uint64{buf(r), 8, next, 1}), 16, indirect, 0)
			q.Publish(0)
		}},
		{"indirect entry outside RAM", func(r *rig, q *virtiotest.Queue) {
			q.SetDesc(0, table(r, [4]uint64{ramEnd, 8, 0, 0}), 16, indirect, 0)
			q.Publish(0)
		}},
	}
	run := func(name string, features uint64, set setup) {
		t.Run(name, func(t *testing.T) {
			r := newRig(t)
			r.drv.Init(features, 16, 8)
			q := r.drv.Queues[0]
			set(r, q)
			before := append([]byte(nil), r.mem.Bytes...)
			q.Kick()
			if s := r.status(); s&abi.StatusDeviceNeedsReset == 0 {
				t.Fatalf("status 0x%x: want DEVICE_NEEDS_RESET", s)
			}
			if got := r.drv.Read32(abi.MMIOInterruptStatus); got&abi.InterruptConfigChange == 0 {
				t.Errorf("interrupt status 0x%x: want the configuration change bit", got)
			}
			if !bytes.Equal(before, r.mem.Bytes) {
				t.Error("the device wrote guest memory while rejecting the chain")
			}
			q.Kick() // a broken device ignores further notifications
			// The driver resets and starts over: the device works again.
			r.drv.Write32(abi.MMIOStatus, 0)
			if s := r.status(); s != 0 {
				t.Fatalf("status after reset 0x%x, want 0", s)
			}
			r.drv.Init(features, 16, 8)
			q = r.drv.Queues[0]
			q.Add(r.drv.Readable([]byte("ok")), r.drv.Writable(2))
			q.Kick()
			if _, n, ok := q.Used(); !ok || n != 2 {
				t.Fatalf("after reset: used (%d, %v), want (2, true)", n, ok)
			}
		})
	}
	for _, c := range cases {
		run(c.name, v1, c.set)
	}
	for _, c := range withIndirect {
		run(c.name, v1|1<<abi.FIndirectDesc, c.set)
	}
}

// TestBadQueueSetup checks that a queue the driver programmed wrongly makes
// DRIVER_OK fail with DEVICE_NEEDS_RESET instead of activating the device.
func TestBadQueueSetup(t *testing.T) {
	for _, tt := range []struct {
		name string
		prog func(d *virtiotest.Driver)
	}{
		{"size not a power of two", func(d *virtiotest.Driver) { d.Write32(abi.MMIOQueueNum, 12) }},
		{"size above QueueNumMax", func(d *virtiotest.Driver) { d.Write32(abi.MMIOQueueNum, 32) }},
		{"size zero", func(d *virtiotest.Driver) { d.Write32(abi.MMIOQueueNum, 0) }},
		{"size above 16 bits", func(d *virtiotest.Driver) { d.Write32(abi.MMIOQueueNum, 1<<16) }},
		{"misaligned descriptor table", func(d *virtiotest.Driver) { d.Write32(abi.MMIOQueueDescLow, ramBase+8) }},
		{"misaligned used ring", func(d *virtiotest.Driver) { d.Write32(abi.MMIOQueueDeviceLow, ramBase+2) }},
		{"descriptor table outside RAM", func(d *virtiotest.Driver) { d.Write32(abi.MMIOQueueDescHigh, 1) }},
		{"driver area outside RAM", func(d *virtiotest.Driver) { d.Write32(abi.MMIOQueueDriverLow, 0) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t)
			if !r.drv.Negotiate(v1) {
				t.Fatal("features refused")
			}
			r.drv.Write32(abi.MMIOQueueSel, 0)
			r.drv.Write32(abi.MMIOQueueNum, 16)
			a := uint32(ramBase)
			r.drv.Write32(abi.MMIOQueueDescLow, a)
			r.drv.Write32(abi.MMIOQueueDriverLow, a+0x1000)
			r.drv.Write32(abi.MMIOQueueDeviceLow, a+0x2000)
			tt.prog(r.drv)
			r.drv.Write32(abi.MMIOQueueReady, 1)
			r.drv.Write32(abi.MMIOStatus, abi.StatusAcknowledge|abi.StatusDriver|abi.StatusFeaturesOK|abi.StatusDriverOK)
			if s := r.status(); s&abi.StatusDeviceNeedsReset == 0 {
				t.Errorf("status 0x%x: want DEVICE_NEEDS_RESET", s)
			}
			if r.dev.activations != 0 {
				t.Errorf("device activated %d times, want 0", r.dev.activations)
			}
		})
	}
}

// TestRegisterMisuse pokes the transport the ways the spec forbids; nothing
// may panic, and the state must stay what the rules say.
func TestRegisterMisuse(t *testing.T) {
	r := newRig(t)
	d := r.drv
	// Sub-word and misaligned register accesses read as zero and are ignored.
	for _, size := range []int{1, 2, 8} {
		b := bytes.Repeat([]byte{0xff}, size)
		r.mmio.Read(abi.MMIOMagicValue, b)
		if !bytes.Equal(b, make([]byte, size)) {
			t.Errorf("%d-byte read of the magic: got %x, want zeros", size, b)
		}
		r.mmio.Write(abi.MMIOStatus, b)
	}
	r.mmio.Read(abi.MMIOMagicValue+1, make([]byte, 4))
	if s := r.status(); s != 0 {
		t.Errorf("status after sub-word writes 0x%x, want 0", s)
	}
	// Write-only and unknown registers.
	for _, off := range []uint64{abi.MMIOQueueNotify, abi.MMIOInterruptACK, 0x0f0} {
		if got := d.Read32(off); got != 0 {
			t.Errorf("read 0x%03x: got 0x%x, want 0", off, got)
		}
	}
	d.Write32(abi.MMIOMagicValue, 0) // read-only
	if got := d.Read32(abi.MMIOMagicValue); got != abi.MMIOMagic {
		t.Errorf("magic after write: 0x%x", got)
	}
	// Notifications before DRIVER_OK and for absent queues are ignored.
	d.Write32(abi.MMIOQueueNotify, 0)
	d.Write32(abi.MMIOQueueNotify, 1000)
	// Driver features outside negotiation are ignored.
	d.Write32(abi.MMIODriverFeatures, 0xffffffff)
	if !d.Negotiate(v1) {
		t.Fatal("features refused after stray write")
	}
	// A queue selector naming no queue reports size 0 and ignores writes.
	d.Write32(abi.MMIOQueueSel, 5)
	if got := d.Read32(abi.MMIOQueueNumMax); got != 0 {
		t.Errorf("QueueNumMax of absent queue: got %d, want 0", got)
	}
	d.Write32(abi.MMIOQueueReady, 1)
	if got := d.Read32(abi.MMIOQueueReady); got != 0 {
		t.Errorf("QueueReady of absent queue: got %d, want 0", got)
	}
	// Clearing status bits without a reset is refused.
	d.Write32(abi.MMIOStatus, abi.StatusAcknowledge)
	if s := r.status(); s != abi.StatusAcknowledge|abi.StatusDriver|abi.StatusFeaturesOK {
		t.Errorf("status after clearing bits: 0x%x", s)
	}
	// DRIVER_OK with no queue enabled activates; the device decides whether
	// it can work without queues (echoDev can).
	d.Write32(abi.MMIOStatus, abi.StatusAcknowledge|abi.StatusDriver|abi.StatusFeaturesOK|abi.StatusDriverOK)
	// Queue registers after DRIVER_OK are ignored.
	d.Write32(abi.MMIOQueueSel, 0)
	d.Write32(abi.MMIOQueueNum, 4)
	d.Write32(abi.MMIOQueueReady, 1)
	if got := d.Read32(abi.MMIOQueueReady); got != 0 {
		t.Errorf("QueueReady written after DRIVER_OK: got %d, want 0", got)
	}
	d.Write32(abi.MMIOQueueNotify, 0) // queue 0 not enabled
	// Configuration space passes through at any width.
	r.mmio.Write(abi.MMIOConfig+2, []byte{7, 8})
	b := make([]byte, 8)
	r.mmio.Read(abi.MMIOConfig, b)
	if want := []byte{0, 0, 7, 8, 0, 0, 0, 0}; !bytes.Equal(b, want) {
		t.Errorf("config space: got %v, want %v", b, want)
	}
}

func TestStateRoundTrip(t *testing.T) {
	r := newRig(t)
	r.drv.Init(v1|1<<abi.FIndirectDesc, 16, 8)
	q := r.drv.Queues[0]
	for range 21 {
		q.Add(r.drv.Readable([]byte("a")), r.drv.Writable(1))
		q.Kick()
		if _, _, ok := q.Used(); !ok {
			t.Fatal("chain not used")
		}
	}
	st := r.mmio.State()
	blob, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var back State
	if err := json.Unmarshal(blob, &back); err != nil {
		t.Fatal(err)
	}
	if back.Queues[0].NextAvail != 21 || back.Queues[0].NextUsed != 21 {
		t.Fatalf("saved positions (%d, %d), want (21, 21)", back.Queues[0].NextAvail, back.Queues[0].NextUsed)
	}
	// A new device and transport over the same guest memory carry on.
	dev2 := &echoDev{}
	m2, err := RestoreMMIO(dev2, r.mem, r.irq, discard(), back)
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if dev2.activations != 1 {
		t.Fatalf("restored device activations: got %d, want 1", dev2.activations)
	}
	r.drv.Dev = m2
	q.Add(r.drv.Readable([]byte("b")), r.drv.Writable(1))
	q.Kick()
	if _, n, ok := q.Used(); !ok || n != 1 {
		t.Fatalf("after restore: used (%d, %v), want (1, true)", n, ok)
	}
	if got := m2.State(); got.Queues[0].NextUsed != 22 {
		t.Errorf("used index after restore: got %d, want 22", got.Queues[0].NextUsed)
	}

	bad := back
	bad.Queues = bad.Queues[:1]
	if _, err := RestoreMMIO(&echoDev{}, r.mem, r.irq, discard(), bad); err == nil {
		t.Error("restoring with the wrong number of queues: got nil error")
	}
	bad = back
	bad.DriverFeatures |= 1 << abi.FRingPacked
	if _, err := RestoreMMIO(&echoDev{}, r.mem, r.irq, discard(), bad); err == nil {
		t.Error("restoring unoffered features: got nil error")
	}
}

func TestResetAndClose(t *testing.T) {
	r := newRig(t)
	r.drv.Init(v1, 16, 8)
	r.drv.Write32(abi.MMIOStatus, 0)
	if r.dev.resets != 1 {
		t.Errorf("device resets: got %d, want 1", r.dev.resets)
	}
	r.drv.Write32(abi.MMIOQueueSel, 0)
	if got := r.drv.Read32(abi.MMIOQueueReady); got != 0 {
		t.Errorf("queue ready after reset: got %d, want 0", got)
	}
	r.drv.Init(v1, 16, 8)
	if err := r.mmio.Close(); err != nil {
		t.Fatal(err)
	}
	if r.dev.resets != 2 {
		t.Errorf("Close of an active device: resets %d, want 2", r.dev.resets)
	}
}

func TestStatusBits(t *testing.T) {
	r := newRig(t)
	d := r.drv
	d.Write32(abi.MMIOStatus, abi.StatusAcknowledge)
	d.Write32(abi.MMIOStatus, abi.StatusAcknowledge|0x10) // bit 4 is undefined
	if s := r.status(); s != abi.StatusAcknowledge {
		t.Errorf("status after writing an undefined bit: 0x%x, want 0x%x", s, abi.StatusAcknowledge)
	}
	// A read-modify-write that carries DEVICE_NEEDS_RESET back is accepted
	// without it.
	d.Write32(abi.MMIOStatus, abi.StatusAcknowledge|abi.StatusDriver|abi.StatusDeviceNeedsReset)
	if s := r.status(); s != abi.StatusAcknowledge|abi.StatusDriver {
		t.Errorf("status after writing NEEDS_RESET back: 0x%x, want 0x%x", s, abi.StatusAcknowledge|abi.StatusDriver)
	}
	d.Write32(abi.MMIOStatus, abi.StatusAcknowledge|abi.StatusDriver|abi.StatusFailed)
	if s := r.status(); s&abi.StatusFailed == 0 {
		t.Errorf("status 0x%x: FAILED not recorded", s)
	}
}

// TestEventIdx checks VIRTIO_F_EVENT_IDX (spec 2.7.10): interrupts only
// when the used index passes the driver's used_event, and avail_event
// written when the device finds the queue empty.
func TestEventIdx(t *testing.T) {
	r := newRig(t)
	r.drv.Init(v1|1<<abi.FEventIdx, 16, 8)
	q := r.drv.Queues[0]
	q.AutoUsedEvent = false
	q.SetUsedEvent(2)                      // interrupt once used idx passes 2
	q.SetAvailFlags(abi.AvailFNoInterrupt) // ignored with event idx
	for i := range 4 {
		q.Add(r.drv.Readable([]byte("x")), r.drv.Writable(1))
		q.Kick()
		if _, _, ok := q.Used(); !ok {
			t.Fatalf("chain %d not used", i)
		}
		want := uint64(0)
		if i >= 2 { // used idx went 2 -> 3 on the third chain
			want = 1
		}
		if got := r.irq.Count(); got != want {
			t.Fatalf("after chain %d: %d interrupts, want %d", i, got, want)
		}
		if got := q.AvailEvent(); got != uint16(i+1) {
			t.Errorf("after chain %d: avail_event %d, want %d (the next entry)", i, got, i+1)
		}
	}
}
