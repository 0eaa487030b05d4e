package virtio

import (
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"sync"
	"sync/atomic"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
)

// VendorID is what the transport reports in VendorID: "THAW" in ASCII.
const VendorID = 0x54484157

// offerable are the feature bits a transport passes on to the driver: the
// device-type bits (0–23 and 50–63, spec 6) and the reserved bits the queue
// code implements. Others (RING_PACKED, IN_ORDER, ...) stay hidden even if
// a device offers them.
const offerable = (1<<24 - 1) | ^uint64(1<<50-1) | 1<<abi.FIndirectDesc | 1<<abi.FEventIdx | 1<<abi.FVersion1

// queueConfig is what the driver programmed for one queue.
type queueConfig struct {
	size                 uint16
	ready                bool
	desc, driver, device uint64
}

// MMIO is one virtio-mmio transport window (4 KiB). The VMM's MMIO bus calls
// Read/Write from vCPU threads with the offset inside the window.
type MMIO struct {
	dev       Device
	mem       Memory
	irq       Interrupt
	log       *slog.Logger
	maxSizes  []uint16
	devFeats  uint64
	isr       atomic.Uint32
	needReset atomic.Bool
	configGen atomic.Uint32

	mu sync.Mutex
	// guarded by mu
	status     uint32
	devFeatSel uint32
	drvFeatSel uint32
	drvFeats   uint64
	queueSel   uint32
	queues     []queueConfig
	live       []*Queue // non-nil while activated
	paused     bool     // Pause called, Resume not yet
	closed     bool
}

// NewMMIO wraps dev in a virtio-mmio transport. log receives a line for
// each guest misprogramming the transport notices, rate-limited (LimitLogs).
func NewMMIO(dev Device, mem Memory, irq Interrupt, log *slog.Logger) *MMIO {
	m := &MMIO{dev: dev, mem: mem, irq: irq, log: LimitLogs(log), maxSizes: dev.QueueMaxSizes()}
	m.devFeats = (dev.Features() | 1<<abi.FVersion1) & offerable
	m.queues = make([]queueConfig, len(m.maxSizes))
	return m
}

func (m *MMIO) guestError(msg string, args ...any) {
	m.log.Warn("virtio-mmio: "+msg, append([]any{"device", m.dev.DeviceID()}, args...)...)
}

// Read handles a guest read of len(data) bytes at offset in the window.
func (m *MMIO) Read(offset uint64, data []byte) {
	clear(data)
	if offset >= abi.MMIOConfig {
		m.dev.ReadConfig(offset-abi.MMIOConfig, data)
		return
	}
	if len(data) != 4 || offset%4 != 0 {
		m.guestError("register read must be 32-bit aligned (spec 4.2.2.2)", "offset", offset, "size", len(data))
		return
	}
	le.PutUint32(data, m.readReg(offset))
}

func (m *MMIO) readReg(offset uint64) uint32 {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch offset {
	case abi.MMIOMagicValue:
		return abi.MMIOMagic
	case abi.MMIOVersion:
		return abi.MMIOVersionModern
	case abi.MMIODeviceID:
		return m.dev.DeviceID()
	case abi.MMIOVendorID:
		return VendorID
	case abi.MMIODeviceFeatures:
		if m.devFeatSel > 1 {
			return 0
		}
		return uint32(m.devFeats >> (32 * m.devFeatSel))
	case abi.MMIOQueueNumMax:
		if q := m.selectedLocked(); q >= 0 {
			return uint32(m.maxSizes[q])
		}
		return 0
	case abi.MMIOQueueReady:
		if q := m.selectedLocked(); q >= 0 && m.queues[q].ready {
			return 1
		}
		return 0
	case abi.MMIOInterruptStatus:
		return m.isr.Load()
	case abi.MMIOStatus:
		s := m.status
		if m.needReset.Load() {
			s |= abi.StatusDeviceNeedsReset
		}
		return s
	case abi.MMIOConfigGeneration:
		return m.configGen.Load()
	case abi.MMIOSHMLenLow, abi.MMIOSHMLenHigh, abi.MMIOSHMBaseLow, abi.MMIOSHMBaseHigh:
		return ^uint32(0) // no shared memory regions (spec 4.2.2)
	case abi.MMIOQueueReset:
		return 0
	}
	m.guestError("read of a write-only or unknown register", "offset", offset)
	return 0
}

// selectedLocked returns the selected queue's index, or -1 if QueueSel
// names no queue.
func (m *MMIO) selectedLocked() int {
	if int64(m.queueSel) >= int64(len(m.queues)) {
		return -1
	}
	return int(m.queueSel)
}

// Write handles a guest write of data at offset in the window.
func (m *MMIO) Write(offset uint64, data []byte) {
	if offset >= abi.MMIOConfig {
		m.mu.Lock()
		m.dev.WriteConfig(offset-abi.MMIOConfig, data)
		m.mu.Unlock()
		return
	}
	if len(data) != 4 || offset%4 != 0 {
		m.guestError("register write must be 32-bit aligned (spec 4.2.2.2)", "offset", offset, "size", len(data))
		return
	}
	v := le.Uint32(data)
	if offset == abi.MMIOQueueNotify {
		m.notify(v)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch offset {
	case abi.MMIODeviceFeaturesSel:
		m.devFeatSel = v
	case abi.MMIODriverFeaturesSel:
		m.drvFeatSel = v
	case abi.MMIODriverFeatures:
		if m.status&abi.StatusDriver == 0 || m.status&abi.StatusFeaturesOK != 0 {
			m.guestError("driver features written outside feature negotiation", "status", m.status)
			return
		}
		if m.drvFeatSel > 1 {
			if v != 0 {
				m.guestError("driver accepted features beyond bit 63", "select", m.drvFeatSel, "value", v)
			}
			return
		}
		shift := 32 * m.drvFeatSel
		m.drvFeats = m.drvFeats&^(0xffffffff<<shift) | uint64(v)<<shift
	case abi.MMIOQueueSel:
		m.queueSel = v
	case abi.MMIOQueueNum, abi.MMIOQueueReady,
		abi.MMIOQueueDescLow, abi.MMIOQueueDescHigh,
		abi.MMIOQueueDriverLow, abi.MMIOQueueDriverHigh,
		abi.MMIOQueueDeviceLow, abi.MMIOQueueDeviceHigh:
		m.writeQueueLocked(offset, v)
	case abi.MMIOInterruptACK:
		m.isr.And(^v)
	case abi.MMIOStatus:
		m.writeStatusLocked(v)
	default:
		m.guestError("write to a read-only or unknown register", "offset", offset, "value", v)
	}
}

func (m *MMIO) writeQueueLocked(offset uint64, v uint32) {
	q := m.selectedLocked()
	if q < 0 {
		m.guestError("queue register written with no such queue selected", "queue", m.queueSel, "offset", offset)
		return
	}
	if m.status&abi.StatusDriverOK != 0 {
		m.guestError("queue register written after DRIVER_OK", "queue", q, "offset", offset)
		return
	}
	c := &m.queues[q]
	if c.ready && offset != abi.MMIOQueueReady {
		m.guestError("queue register written while the queue is ready", "queue", q, "offset", offset)
		return
	}
	setLow := func(p *uint64) { *p = *p&^0xffffffff | uint64(v) }
	setHigh := func(p *uint64) { *p = *p&0xffffffff | uint64(v)<<32 }
	switch offset {
	case abi.MMIOQueueNum:
		c.size = 0 // a size beyond 16 bits is stored as 0, rejected at DRIVER_OK
		if v <= 0xffff {
			c.size = uint16(v)
		}
	case abi.MMIOQueueReady:
		c.ready = v&1 != 0
	case abi.MMIOQueueDescLow:
		setLow(&c.desc)
	case abi.MMIOQueueDescHigh:
		setHigh(&c.desc)
	case abi.MMIOQueueDriverLow:
		setLow(&c.driver)
	case abi.MMIOQueueDriverHigh:
		setHigh(&c.driver)
	case abi.MMIOQueueDeviceLow:
		setLow(&c.device)
	case abi.MMIOQueueDeviceHigh:
		setHigh(&c.device)
	}
}

func (m *MMIO) writeStatusLocked(v uint32) {
	if v == 0 {
		m.resetLocked()
		return
	}
	// Linux updates status by read-modify-write, so DEVICE_NEEDS_RESET may
	// come back to us; it is the device's bit and is ignored.
	v &^= abi.StatusDeviceNeedsReset
	const settable = abi.StatusAcknowledge | abi.StatusDriver | abi.StatusFeaturesOK | abi.StatusDriverOK | abi.StatusFailed
	if v&^settable != 0 {
		m.guestError("driver wrote undefined status bits (spec 2.1)", "status", v)
		return
	}
	old := m.status
	if v&old != old {
		m.guestError("driver cleared status bits without a reset (spec 2.1.2)", "old", old, "new", v)
		return
	}
	added := v &^ old
	if added&abi.StatusFailed != 0 {
		m.log.Info("virtio-mmio: driver gave up on the device (status FAILED)", "device", m.dev.DeviceID())
	}
	if added&abi.StatusFeaturesOK != 0 {
		if err := m.checkFeaturesLocked(v); err != nil {
			m.guestError("refusing FEATURES_OK", "err", err)
			v &^= abi.StatusFeaturesOK // the driver re-reads and sees it clear (spec 3.1.1)
			added &^= abi.StatusFeaturesOK
		}
	}
	if added&abi.StatusDriverOK != 0 {
		if v&abi.StatusFeaturesOK == 0 {
			m.guestError("DRIVER_OK without FEATURES_OK", "status", v)
			return
		}
		m.status = v
		if err := m.activateLocked(nil); err != nil {
			m.fail(fmt.Errorf("activating: %w", err))
		}
		return
	}
	m.status = v
}

func (m *MMIO) checkFeaturesLocked(status uint32) error {
	switch {
	case status&abi.StatusDriver == 0:
		return errors.New("DRIVER not set")
	case m.drvFeats&^m.devFeats != 0:
		return fmt.Errorf("driver accepted features 0x%x the device did not offer", m.drvFeats&^m.devFeats)
	case m.drvFeats&(1<<abi.FVersion1) == 0:
		return errors.New("driver did not accept VIRTIO_F_VERSION_1; legacy drivers are not supported")
	}
	return nil
}

// activateLocked builds the queues the driver enabled and starts the device.
// positions, when non-nil, restores each queue's ring positions.
func (m *MMIO) activateLocked(positions []QueueState) error {
	live := make([]*Queue, len(m.queues))
	for i, c := range m.queues {
		if !c.ready {
			continue
		}
		q, err := m.buildQueue(i, c)
		if err != nil {
			return err
		}
		if positions != nil {
			q.nextAvail, q.nextUsed = positions[i].NextAvail, positions[i].NextUsed
			q.signalled = q.nextUsed
		}
		live[i] = q
	}
	err := m.dev.Activate(Activation{
		Features:   m.drvFeats,
		Queues:     live,
		Mem:        m.mem,
		NeedsReset: m.fail,
	})
	if err != nil {
		return err
	}
	m.live = live
	return nil
}

func (m *MMIO) buildQueue(i int, c queueConfig) (*Queue, error) {
	switch {
	case c.size == 0 || c.size > m.maxSizes[i] || bits.OnesCount16(c.size) != 1:
		return nil, fmt.Errorf("%w: queue %d size %d must be a power of two in [1, %d]", ErrMalformed, i, c.size, m.maxSizes[i])
	case c.desc%abi.DescAlign != 0 || c.driver%abi.AvailAlign != 0 || c.device%abi.UsedAlign != 0:
		return nil, fmt.Errorf("%w: queue %d rings misaligned (desc 0x%x, driver 0x%x, device 0x%x)", ErrMalformed, i, c.desc, c.driver, c.device)
	}
	n := uint64(c.size)
	parts := []struct {
		name      string
		addr, len uint64
	}{
		{"descriptor table", c.desc, n * abi.DescSize},
		{"driver area", c.driver, abi.AvailOffRing + n*abi.AvailElemSize + 2},
		{"device area", c.device, abi.UsedOffRing + n*abi.UsedElemSize + 2},
	}
	for _, p := range parts {
		if _, err := m.mem.Slice(p.addr, p.len); err != nil {
			return nil, fmt.Errorf("%w: queue %d %s at 0x%x+%d: %v", ErrMalformed, i, p.name, p.addr, p.len, err)
		}
	}
	return &Queue{
		mem: m.mem, size: c.size, desc: c.desc, avail: c.driver, used: c.device,
		indirect: m.drvFeats&(1<<abi.FIndirectDesc) != 0,
		eventIdx: m.drvFeats&(1<<abi.FEventIdx) != 0,
		signal:   m.usedBuffer,
	}, nil
}

// resetLocked performs the device reset the driver requested by writing 0
// to Status (spec 2.1.2, 4.2.3.1).
func (m *MMIO) resetLocked() {
	if m.live != nil {
		m.dev.Reset()
		m.live = nil
	}
	m.paused = false
	m.status, m.devFeatSel, m.drvFeatSel, m.drvFeats, m.queueSel = 0, 0, 0, 0, 0
	clear(m.queues)
	m.isr.Store(0)
	m.needReset.Store(false)
}

// fail is the device's NeedsReset callback: DEVICE_NEEDS_RESET plus a
// configuration change notification (spec 2.1.2). It is only called once
// DRIVER_OK is set, and takes no lock, because devices call it from
// goroutines that Reset (called with mu held) waits for.
func (m *MMIO) fail(err error) {
	m.log.Warn("virtio-mmio: device needs reset", "device", m.dev.DeviceID(), "err", err)
	if m.needReset.Swap(true) {
		return
	}
	m.configGen.Add(1)
	m.raise(abi.InterruptConfigChange)
}

func (m *MMIO) usedBuffer(*Queue) { m.raise(abi.InterruptUsedBuffer) }

func (m *MMIO) raise(bit uint32) {
	m.isr.Or(bit)
	if err := m.irq.Trigger(); err != nil {
		m.log.Error("virtio-mmio: raising interrupt", "device", m.dev.DeviceID(), "err", err)
	}
}

func (m *MMIO) notify(v uint32) {
	m.mu.Lock()
	active := m.live != nil && !m.closed
	ok := int64(v) < int64(len(m.live)) && active && m.live[v] != nil
	m.mu.Unlock()
	switch {
	case !active:
		m.guestError("queue notified before DRIVER_OK", "queue", v)
	case m.needReset.Load():
		// The device is broken until the driver resets it.
	case !ok:
		m.guestError("notification for a queue that is not enabled", "queue", v)
	default:
		m.dev.Notify(int(v))
	}
}

// Pause stops the device's own activity on guest memory (see Pauser) so
// that State and the guest memory it describes hold still. Devices that
// work only on vCPU threads need nothing: the paused vCPUs stop them.
func (m *MMIO) Pause() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, ok := m.dev.(Pauser); ok && m.live != nil && !m.paused {
		p.Pause()
		m.paused = true
	}
}

// Resume undoes Pause.
func (m *MMIO) Resume() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, ok := m.dev.(Pauser); ok && m.paused {
		m.paused = false
		p.Resume()
	}
}

// Close stops the device's goroutines and releases its host resources.
func (m *MMIO) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	if m.live != nil {
		m.dev.Reset()
		m.live = nil
	}
	m.mu.Unlock()
	return m.dev.Close()
}
