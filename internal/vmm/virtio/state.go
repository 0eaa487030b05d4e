package virtio

import (
	"fmt"
	"log/slog"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
)

// QueueState is one queue's configuration and ring positions in a
// snapshot.
type QueueState struct {
	Size       uint16 `json:"size"`
	Ready      bool   `json:"ready"`
	DescAddr   uint64 `json:"desc_addr"`
	DriverAddr uint64 `json:"driver_addr"`
	DeviceAddr uint64 `json:"device_addr"`
	// NextAvail is the next available-ring entry the device will pop.
	NextAvail uint16 `json:"next_avail"`
	// NextUsed is the used-ring index the device last published.
	NextUsed uint16 `json:"next_used"`
}

// State is a transport's guest-visible state, plain data for snapshots.
type State struct {
	Status            uint32       `json:"status"`
	NeedsReset        bool         `json:"needs_reset"`
	DeviceFeaturesSel uint32       `json:"device_features_sel"`
	DriverFeaturesSel uint32       `json:"driver_features_sel"`
	DriverFeatures    uint64       `json:"driver_features"`
	QueueSel          uint32       `json:"queue_sel"`
	InterruptStatus   uint32       `json:"interrupt_status"`
	ConfigGeneration  uint32       `json:"config_generation"`
	Queues            []QueueState `json:"queues"`
}

// State returns the transport's state. Take it with the vCPUs paused; the
// device's own State (blk, vsock) is saved separately.
func (m *MMIO) State() State {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := State{
		Status:            m.status,
		NeedsReset:        m.needReset.Load(),
		DeviceFeaturesSel: m.devFeatSel,
		DriverFeaturesSel: m.drvFeatSel,
		DriverFeatures:    m.drvFeats,
		QueueSel:          m.queueSel,
		InterruptStatus:   m.isr.Load(),
		ConfigGeneration:  m.configGen.Load(),
		Queues:            make([]QueueState, len(m.queues)),
	}
	for i, c := range m.queues {
		qs := QueueState{Size: c.size, Ready: c.ready, DescAddr: c.desc, DriverAddr: c.driver, DeviceAddr: c.device}
		if m.live != nil && m.live[i] != nil {
			q := m.live[i]
			q.mu.Lock()
			qs.NextAvail, qs.NextUsed = q.nextAvail, q.nextUsed
			q.mu.Unlock()
		}
		st.Queues[i] = qs
	}
	return st
}

// RestoreMMIO rebuilds a transport for dev (itself rebuilt from its own
// State) from st. If the driver had finished initialisation, the device is
// activated again with the queues at their saved positions; if an interrupt
// was pending it is raised again, since the edge may have been lost.
func RestoreMMIO(dev Device, mem Memory, irq Interrupt, log *slog.Logger, st State) (*MMIO, error) {
	m := NewMMIO(dev, mem, irq, log)
	if len(st.Queues) != len(m.queues) {
		return nil, fmt.Errorf("restoring virtio-mmio state: %d queues saved, device %d has %d", len(st.Queues), dev.DeviceID(), len(m.queues))
	}
	const known = abi.StatusAcknowledge | abi.StatusDriver | abi.StatusFeaturesOK | abi.StatusDriverOK | abi.StatusFailed
	if st.Status&^known != 0 {
		return nil, fmt.Errorf("restoring virtio-mmio state: unknown status bits 0x%x", st.Status&^known)
	}
	if st.DriverFeatures&^m.devFeats != 0 {
		return nil, fmt.Errorf("restoring virtio-mmio state: features 0x%x are not offered by this device", st.DriverFeatures&^m.devFeats)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.status = st.Status
	m.devFeatSel, m.drvFeatSel, m.drvFeats = st.DeviceFeaturesSel, st.DriverFeaturesSel, st.DriverFeatures
	m.queueSel = st.QueueSel
	m.configGen.Store(st.ConfigGeneration)
	m.isr.Store(st.InterruptStatus)
	m.needReset.Store(st.NeedsReset)
	for i, q := range st.Queues {
		m.queues[i] = queueConfig{size: q.Size, ready: q.Ready, desc: q.DescAddr, driver: q.DriverAddr, device: q.DeviceAddr}
	}
	if st.Status&abi.StatusDriverOK != 0 && !st.NeedsReset {
		if err := m.activateLocked(st.Queues); err != nil {
			return nil, fmt.Errorf("restoring virtio-mmio state: %w", err)
		}
	}
	if st.InterruptStatus != 0 {
		if err := irq.Trigger(); err != nil {
			return nil, fmt.Errorf("restoring virtio-mmio state: raising pending interrupt: %w", err)
		}
	}
	return m, nil
}
