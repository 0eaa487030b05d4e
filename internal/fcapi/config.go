package fcapi

import (
	"fmt"
)

// MaxConfigFileSize bounds a --config-file; real ones are a few KiB.
const MaxConfigFileSize = 1 << 20

// VMConfig is Firecracker's --config-file document (and the body of its
// GET /vm/config): the whole pre-boot configuration of an API-less boot.
// Keys are kebab-case at the top level, as Firecracker spells them;
// boot-source and drives are required, as in Firecracker.
type VMConfig struct {
	BootSource        BootSource         `json:"boot-source" fc:"required"`
	Drives            []Drive            `json:"drives" fc:"required"`
	MachineConfig     *MachineConfig     `json:"machine-config,omitempty"`
	Vsock             *Vsock             `json:"vsock,omitempty"`
	NetworkInterfaces []NetworkInterface `json:"network-interfaces,omitempty"`
}

func (VMConfig) notImplemented() map[string][]string {
	return map[string][]string{
		"balloon": nil, "cpu-config": nil, "logger": nil, "metrics": nil, "mmds-config": nil,
		"entropy": nil, "pmem": nil, "memory-hotplug": nil,
	}
}

// Validate checks every section, then what only the whole can show:
// duplicate drive or interface IDs and more than one root drive.
func (c VMConfig) Validate() error {
	if err := c.BootSource.Validate(); err != nil {
		return fmt.Errorf("boot-source: %w", err)
	}
	drives := map[string]bool{}
	root := ""
	for i, d := range c.Drives {
		if err := d.Validate(); err != nil {
			return fmt.Errorf("drives[%d]: %w", i, err)
		}
		if drives[d.DriveID] {
			return fmt.Errorf("drives[%d]: drive_id %q appears twice", i, d.DriveID)
		}
		drives[d.DriveID] = true
		if d.IsRootDevice {
			if root != "" {
				return fmt.Errorf("drives[%d]: drive %q and drive %q are both root devices: want at most one", i, root, d.DriveID)
			}
			root = d.DriveID
		}
	}
	if c.MachineConfig != nil {
		if err := c.MachineConfig.Validate(); err != nil {
			return fmt.Errorf("machine-config: %w", err)
		}
	}
	if c.Vsock != nil {
		if err := c.Vsock.Validate(); err != nil {
			return fmt.Errorf("vsock: %w", err)
		}
	}
	ifaces := map[string]bool{}
	for i, n := range c.NetworkInterfaces {
		if err := n.Validate(); err != nil {
			return fmt.Errorf("network-interfaces[%d]: %w", i, err)
		}
		if ifaces[n.IfaceID] {
			return fmt.Errorf("network-interfaces[%d]: iface_id %q appears twice", i, n.IfaceID)
		}
		ifaces[n.IfaceID] = true
	}
	return nil
}

// ParseConfigFile parses and validates a Firecracker --config-file
// document. Sections of Firecracker's format that Thaw does not implement
// (balloon, logger, metrics, ...) are errors naming the section, not
// silently ignored: a VM booted without a device its config asked for would
// fail later and more confusingly.
func ParseConfigFile(data []byte) (*VMConfig, error) {
	if len(data) > MaxConfigFileSize {
		return nil, fmt.Errorf("config file is %d bytes: want at most %d", len(data), MaxConfigFileSize)
	}
	var c VMConfig
	if err := Decode(data, &c); err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	return &c, nil
}
