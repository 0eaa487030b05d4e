package vmm

import (
	"errors"
	"fmt"
	"os"

	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/vmm/api"
	"github.com/thawvm/thaw/internal/vmm/boot"
)

var _ api.Machine = (*Machine)(nil)

// SetBootSource implements api.Machine: PUT /boot-source.
func (m *Machine) SetBootSource(b fcapi.BootSource) error {
	if err := checkFile("kernel_image_path", b.KernelImagePath); err != nil {
		return err
	}
	if b.InitrdPath != "" {
		if err := checkFile("initrd_path", b.InitrdPath); err != nil {
			return err
		}
	}
	return m.Configure(func(c *Config) error {
		c.Kernel, c.Initrd, c.Cmdline = b.KernelImagePath, b.InitrdPath, b.BootArgs
		if b.BootArgs == "" {
			c.Cmdline = DefaultCmdline
		}
		return nil
	})
}

// checkFile fails, naming the field, unless path is a readable regular file.
func checkFile(field, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: %s is not a regular file", field, path)
	}
	return nil
}

// SetMachineConfig implements api.Machine: PUT /machine-config. Values
// Firecracker accepts but thaw-vmm cannot honour are refused, naming them.
func (m *Machine) SetMachineConfig(mc fcapi.MachineConfig) error {
	if mc.VcpuCount > boot.MaxVCPUs {
		return fmt.Errorf("vcpu_count is %d: thaw-vmm supports at most %d", mc.VcpuCount, boot.MaxVCPUs)
	}
	if mc.MemSizeMib < MinMemMiB || uint64(mc.MemSizeMib) > MaxMemMiB {
		return fmt.Errorf("mem_size_mib is %d: thaw-vmm needs %d to %d", mc.MemSizeMib, MinMemMiB, MaxMemMiB)
	}
	if mc.SMT {
		return errors.New("smt: simultaneous multithreading is not supported by thaw-vmm; set smt to false")
	}
	if mc.TrackDirtyPages {
		return errors.New("track_dirty_pages: dirty page tracking (diff snapshots) is not implemented in thaw-vmm; set it to false")
	}
	if mc.HugePages != "" && mc.HugePages != fcapi.HugePagesNone {
		return fmt.Errorf("huge_pages %q: thaw-vmm backs guest memory with normal pages only; use %q", mc.HugePages, fcapi.HugePagesNone)
	}
	return m.Configure(func(c *Config) error {
		c.VCPUs, c.MemMiB = mc.VcpuCount, uint64(mc.MemSizeMib)
		return nil
	})
}

// MachineConfig implements api.Machine: GET /machine-config.
func (m *Machine) MachineConfig() fcapi.MachineConfig {
	c := m.Config()
	return fcapi.MachineConfig{VcpuCount: c.VCPUs, MemSizeMib: int(c.MemMiB), HugePages: fcapi.HugePagesNone}
}
