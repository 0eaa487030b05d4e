package vmm

import (
	"encoding/json"
	"fmt"

	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/vmm/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio/blk"
	"github.com/thawvm/thaw/internal/vmm/virtio/vsock"
	"github.com/thawvm/thaw/internal/vmm/vmstate"
)

// Device kinds in the vmstate for the virtio devices.
const (
	devVirtioBlk   = "virtio-blk"
	devVirtioVsock = "virtio-vsock"
)

func isVirtio(kind string) bool { return kind == devVirtioBlk || kind == devVirtioVsock }

// driveSnapConfig is a drive's host-side configuration in a snapshot: what
// the restored device reopens (Firecracker reopens path_on_host too).
type driveSnapConfig struct {
	PathOnHost string `json:"path_on_host"`
	PartUUID   string `json:"partuuid,omitempty"`
}

// vsockSnapConfig is the vsock device's host side in a snapshot.
type vsockSnapConfig struct {
	UDSPath string `json:"uds_path"`
}

// restoredDevices is the configuration of the virtio devices a snapshot
// load rebuilt, for the machine's Config.
type restoredDevices struct {
	drives []DriveConfig
	vsock  *VsockConfig
}

// pauseVirtio stops every virtio device's own work on guest memory (vsock's
// live connections are reset, as Firecracker's are when it saves a vsock
// device), so that their state and guest memory hold still.
func pauseVirtio(hw *hardware) {
	for _, d := range hw.virtio {
		d.mmio.Pause()
	}
}

// resumeVirtio undoes pauseVirtio, so the machine can go on.
func resumeVirtio(hw *hardware) {
	for _, d := range hw.virtio {
		d.mmio.Resume()
	}
}

// captureVirtio saves every virtio device in bus order: its window, GSI,
// host configuration, transport and device state. The transports must be
// paused (pauseVirtio).
func captureVirtio(hw *hardware, drives []DriveConfig) ([]vmstate.Device, error) {
	partUUID := map[string]string{}
	for _, d := range drives {
		partUUID[d.ID] = d.PartUUID
	}
	var out []vmstate.Device
	for _, d := range hw.virtio {
		ts := d.mmio.State()
		var (
			kind, id  string
			cfg, devs any
		)
		switch dev := d.dev.(type) {
		case *blk.Device:
			c := dev.Config()
			kind, id = devVirtioBlk, c.ID
			cfg, devs = driveSnapConfig{PathOnHost: c.Path, PartUUID: partUUID[c.ID]}, dev.State()
		case *vsock.Device:
			kind, id = devVirtioVsock, "vsock"
			cfg, devs = vsockSnapConfig{UDSPath: dev.Config().UDSPath}, dev.State()
		default:
			return nil, fmt.Errorf("%s: %T devices cannot be snapshotted", d.name, d.dev)
		}
		vd := vmstate.Device{Kind: kind, ID: id, MMIOBase: d.addr, GSI: d.gsi}
		var err error
		if vd.Config, err = json.Marshal(cfg); err != nil {
			return nil, fmt.Errorf("saving %s: %w", d.name, err)
		}
		if vd.Transport, err = json.Marshal(ts); err != nil {
			return nil, fmt.Errorf("saving %s: %w", d.name, err)
		}
		if vd.State, err = json.Marshal(devs); err != nil {
			return nil, fmt.Errorf("saving %s: %w", d.name, err)
		}
		out = append(out, vd)
	}
	return out, nil
}

// restoreVirtio rebuilds the snapshot's virtio devices at their saved
// windows and GSIs, with fresh irqfds: drives reopen their files, vsock
// listens on its uds_path again (or vo's, Firecracker's vsock_override).
func (m *Machine) restoreVirtio(hw *hardware, devs []vmstate.Device, vo *fcapi.VsockOverride) (restoredDevices, error) {
	var rd restoredDevices
	seenVsock := false
	for _, d := range devs {
		if !isVirtio(d.Kind) {
			continue
		}
		off := d.MMIOBase - VirtioMMIOBase // wraps when below the base: then too large
		slot := off / VirtioWindowSize
		if d.MMIOBase < VirtioMMIOBase || off%VirtioWindowSize != 0 || slot >= MaxVirtioDevices {
			return rd, fmt.Errorf("the snapshot's %s %q is at MMIO address %#x, outside thaw-vmm's virtio windows", d.Kind, d.ID, d.MMIOBase)
		}
		if _, gsi := virtioSlot(int(slot)); d.GSI != gsi {
			return rd, fmt.Errorf("the snapshot's %s %q at %#x uses GSI %d, want %d for that window", d.Kind, d.ID, d.MMIOBase, d.GSI, gsi)
		}
		var ts virtio.State
		if err := json.Unmarshal(d.Transport, &ts); err != nil {
			return rd, fmt.Errorf("restoring %s %q: transport state: %w", d.Kind, d.ID, err)
		}
		var (
			name string
			dev  virtio.Device
		)
		switch d.Kind {
		case devVirtioBlk:
			var c driveSnapConfig
			var s blk.State
			if err := unmarshalBoth(d, &c, &s); err != nil {
				return rd, err
			}
			name = "drive " + s.ID
			b, err := blk.Restore(blk.Config{ID: s.ID, Path: c.PathOnHost, ReadOnly: s.ReadOnly, Root: s.Root}, s, m.log.With("drive", s.ID))
			if err != nil {
				return rd, err
			}
			dev = b
			rd.drives = append(rd.drives, DriveConfig{ID: s.ID, Path: c.PathOnHost, ReadOnly: s.ReadOnly, Root: s.Root, PartUUID: c.PartUUID})
		case devVirtioVsock:
			if seenVsock {
				return rd, fmt.Errorf("the snapshot has two vsock devices; a machine has at most one")
			}
			seenVsock = true
			var c vsockSnapConfig
			var s vsock.State
			if err := unmarshalBoth(d, &c, &s); err != nil {
				return rd, err
			}
			if vo != nil {
				c.UDSPath = vo.UDSPath
			}
			name = "vsock"
			v, err := vsock.Restore(vsock.Config{GuestCID: s.GuestCID, UDSPath: c.UDSPath}, s, m.log.With("device", "vsock"))
			if err != nil {
				return rd, err
			}
			dev = v
			rd.vsock = &VsockConfig{GuestCID: uint32(s.GuestCID), UDSPath: c.UDSPath}
		}
		err := m.attachVirtio(hw, name, dev, d.MMIOBase, d.GSI, func(irq *irqfd) (*virtio.MMIO, error) {
			return virtio.RestoreMMIO(dev, hw.mem, irq, m.log.With("device", name), ts)
		})
		if err != nil {
			return rd, fmt.Errorf("restoring %s: %w", name, err)
		}
	}
	if vo != nil && !seenVsock {
		return rd, fmt.Errorf("vsock_override: the snapshot has no vsock device; drop vsock_override")
	}
	return rd, nil
}

// unmarshalBoth decodes a virtio device's host config and device state.
func unmarshalBoth(d vmstate.Device, cfg, state any) error {
	if err := json.Unmarshal(d.Config, cfg); err != nil {
		return fmt.Errorf("restoring %s %q: config: %w", d.Kind, d.ID, err)
	}
	if err := json.Unmarshal(d.State, state); err != nil {
		return fmt.Errorf("restoring %s %q: state: %w", d.Kind, d.ID, err)
	}
	return nil
}
