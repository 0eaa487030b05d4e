package vmm

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/thawvm/thaw/internal/vmm/boot"
)

// Defaults Firecracker uses when the API does not say otherwise.
const (
	DefaultVCPUs   = 1
	DefaultMemMiB  = 128
	DefaultCmdline = "console=ttyS0 reboot=k panic=1 pci=off"
	// MinMemMiB is the least memory the boot layout fits in.
	MinMemMiB = 16
	// MaxMemMiB bounds guest memory (1 TiB).
	MaxMemMiB = 1 << 20
)

// Config is everything needed to boot a machine.
type Config struct {
	Kernel  string // ELF vmlinux or probe guest
	Initrd  string // optional
	Cmdline string
	VCPUs   int
	MemMiB  uint64
	// Serial receives the guest's console output; nil discards it.
	Serial io.Writer
	// KVMPath is the KVM device; empty means /dev/kvm.
	KVMPath string
	// Drives are the virtio-blk drives, in API order (the root drive is
	// attached first whatever its position).
	Drives []DriveConfig
	// Vsock is the virtio-vsock device, if any.
	Vsock *VsockConfig
	// NoXSAVE hides XSAVE and AVX from the guest (see cpuid.Options):
	// for hosts whose KVM cannot track the guest's XCR0, such as KVM
	// nested under QEMU TCG.
	NoXSAVE bool
	// ShutdownDump, when set, is where guest memory is written (raw, in
	// the memory file's format) when the guest triple-faults, to debug
	// the guest: its page tables, IDT and stacks as they were. The other
	// vCPUs may still run while it is written. Fixed at New.
	ShutdownDump string
}

// withDefaults fills unset fields with Firecracker's defaults.
func (c Config) withDefaults() Config {
	if c.VCPUs == 0 {
		c.VCPUs = DefaultVCPUs
	}
	if c.MemMiB == 0 {
		c.MemMiB = DefaultMemMiB
	}
	if c.KVMPath == "" {
		c.KVMPath = "/dev/kvm"
	}
	return c
}

// Validate reports everything wrong with c (after defaults) in one error.
func (c Config) Validate() error {
	var errs []error
	if c.Kernel == "" {
		errs = append(errs, errors.New("no kernel image: set the boot source's kernel_image_path"))
	} else if fi, err := os.Stat(c.Kernel); err != nil {
		errs = append(errs, fmt.Errorf("kernel image: %w", err))
	} else if !fi.Mode().IsRegular() {
		errs = append(errs, fmt.Errorf("kernel image %s is not a regular file", c.Kernel))
	}
	if c.Initrd != "" {
		if _, err := os.Stat(c.Initrd); err != nil {
			errs = append(errs, fmt.Errorf("initrd: %w", err))
		}
	}
	if c.VCPUs < 1 || c.VCPUs > boot.MaxVCPUs {
		errs = append(errs, fmt.Errorf("vcpu_count %d: want 1 to %d", c.VCPUs, boot.MaxVCPUs))
	}
	if c.MemMiB < MinMemMiB || c.MemMiB > MaxMemMiB {
		errs = append(errs, fmt.Errorf("mem_size_mib %d: want %d to %d", c.MemMiB, MinMemMiB, MaxMemMiB))
	}
	if len(c.Cmdline)+1 > boot.CmdlineMax {
		errs = append(errs, fmt.Errorf("boot_args is %d bytes, more than %d", len(c.Cmdline), boot.CmdlineMax-1))
	}
	return errors.Join(errs...)
}
