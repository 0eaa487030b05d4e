package vmm

import (
	"errors"
	"fmt"
	"strings"

	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/vmm/boot"
	"github.com/thawvm/thaw/internal/vmm/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio/blk"
	"github.com/thawvm/thaw/internal/vmm/virtio/vsock"
)

// Virtio devices are placed Firecracker's way: 4 KiB windows from a fixed
// MMIO base, one GSI each from 5 up, announced on the kernel command line
// as virtio_mmio.device=4K@<addr>:<gsi>.
const (
	VirtioMMIOBase   = 0xd0000000
	VirtioWindowSize = 0x1000
	VirtioFirstGSI   = 5
	// MaxVirtioDevices is how many GSIs the IOAPIC has left for them.
	MaxVirtioDevices = boot.IOAPICPins - VirtioFirstGSI
)

// DriveConfig is one virtio-blk drive (PUT /drives/{id}).
type DriveConfig struct {
	ID       string
	Path     string
	ReadOnly bool
	Root     bool
	PartUUID string
}

// VsockConfig is the virtio-vsock device (PUT /vsock).
type VsockConfig struct {
	GuestCID uint32
	UDSPath  string
}

// virtioDev is one virtio device on the MMIO bus and its interrupt.
type virtioDev struct {
	name string
	mmio *virtio.MMIO
	irq  *irqfd
}

// addVirtio places dev in the next MMIO window with the next GSI and
// returns its command-line announcement.
func (m *Machine) addVirtio(hw *hardware, name string, dev virtio.Device) (string, error) {
	n := len(hw.virtio)
	if n >= MaxVirtioDevices {
		dev.Close()
		return "", fmt.Errorf("%s: more than %d virtio devices", name, MaxVirtioDevices)
	}
	addr := uint64(VirtioMMIOBase + n*VirtioWindowSize)
	gsi := uint32(VirtioFirstGSI + n)
	irq, err := newIRQFD(hw.vm, gsi)
	if err != nil {
		dev.Close()
		return "", fmt.Errorf("%s: %w", name, err)
	}
	t := virtio.NewMMIO(dev, hw.mem, irq, m.log.With("device", name))
	if err := hw.mmio.Add(name, addr, VirtioWindowSize, t); err != nil {
		t.Close()
		irq.Close()
		return "", err
	}
	hw.virtio = append(hw.virtio, virtioDev{name: name, mmio: t, irq: irq})
	return fmt.Sprintf("virtio_mmio.device=4K@%#x:%d", addr, gsi), nil
}

// addDevices creates the configured virtio devices (the root drive first,
// so it is /dev/vda, then the other drives, then vsock, Firecracker's
// order) and returns the full kernel command line.
func (m *Machine) addDevices(hw *hardware, cfg Config) (string, error) {
	var args []string
	if cfg.Cmdline != "" {
		args = append(args, cfg.Cmdline)
	}
	drives := make([]DriveConfig, 0, len(cfg.Drives))
	for _, d := range cfg.Drives {
		if d.Root {
			drives = append([]DriveConfig{d}, drives...)
		} else {
			drives = append(drives, d)
		}
	}
	for i, d := range drives {
		dev, err := blk.New(blk.Config{ID: d.ID, Path: d.Path, ReadOnly: d.ReadOnly, Root: d.Root}, m.log.With("drive", d.ID))
		if err != nil {
			return "", fmt.Errorf("drive %q: %w", d.ID, err)
		}
		arg, err := m.addVirtio(hw, "drive "+d.ID, dev)
		if err != nil {
			return "", err
		}
		args = append(args, arg)
		if d.Root {
			root := fmt.Sprintf("root=/dev/vd%c", 'a'+i)
			if d.PartUUID != "" {
				root = "root=PARTUUID=" + d.PartUUID
			}
			mode := "rw"
			if d.ReadOnly {
				mode = "ro"
			}
			args = append(args, root, mode)
		}
	}
	if v := cfg.Vsock; v != nil {
		dev, err := vsock.New(vsock.Config{GuestCID: uint64(v.GuestCID), UDSPath: v.UDSPath}, m.log.With("device", "vsock"))
		if err != nil {
			return "", fmt.Errorf("vsock: %w", err)
		}
		arg, err := m.addVirtio(hw, "vsock", dev)
		if err != nil {
			return "", err
		}
		args = append(args, arg)
	}
	cmdline := strings.Join(args, " ")
	if len(cmdline)+1 > boot.CmdlineMax {
		return "", fmt.Errorf("kernel command line with the device announcements is %d bytes, more than %d: shorten boot_args", len(cmdline), boot.CmdlineMax-1)
	}
	return cmdline, nil
}

// closeDevices stops the virtio devices; the vCPUs must have stopped.
func (hw *hardware) closeDevices() error {
	var errs []error
	for _, d := range hw.virtio {
		if err := d.mmio.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing %s: %w", d.name, err))
		}
		errs = append(errs, d.irq.Close())
	}
	hw.virtio = nil
	return errors.Join(errs...)
}

// SetDrive implements api.Machine: PUT /drives/{id}. A drive with the same
// ID is replaced.
func (m *Machine) SetDrive(d fcapi.Drive) error {
	if err := checkFile("path_on_host", d.PathOnHost); err != nil {
		return fmt.Errorf("drive %q: %w", d.DriveID, err)
	}
	return m.Configure(func(c *Config) error {
		nd := DriveConfig{ID: d.DriveID, Path: d.PathOnHost, ReadOnly: d.IsReadOnly, Root: d.IsRootDevice, PartUUID: d.PartUUID}
		drives := []DriveConfig{}
		for _, o := range c.Drives {
			if o.ID == d.DriveID {
				continue
			}
			if o.Root && nd.Root {
				return fmt.Errorf("drive %q: drive %q is already the root device; only one drive can be", d.DriveID, o.ID)
			}
			drives = append(drives, o)
		}
		if len(drives)+1+btoi(c.Vsock != nil) > MaxVirtioDevices {
			return fmt.Errorf("drive %q: thaw-vmm supports at most %d virtio devices", d.DriveID, MaxVirtioDevices)
		}
		c.Drives = append(drives, nd)
		return nil
	})
}

// SetVsock implements api.Machine: PUT /vsock.
func (m *Machine) SetVsock(v fcapi.Vsock) error {
	return m.Configure(func(c *Config) error {
		c.Vsock = &VsockConfig{GuestCID: v.GuestCID, UDSPath: v.UDSPath}
		return nil
	})
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
