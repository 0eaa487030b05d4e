package kvm

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"golang.org/x/sys/unix"

	abi "github.com/thawvm/thaw/internal/abi/kvm"
)

// DevicePath is where the KVM system device lives.
const DevicePath = "/dev/kvm"

// System is an open /dev/kvm. It owns the descriptor.
type System struct {
	h handle
}

// Open opens the KVM device at path (normally DevicePath) and checks that it
// speaks the one stable KVM API version.
func Open(path string) (*System, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s (is KVM loaded and are you in the kvm group?): %w", path, err)
	}
	h, err := newHandle(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	s := &System{h: h}
	v, err := h.ioctlVal(abi.KVM_GET_API_VERSION, 0)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("KVM_GET_API_VERSION: %w", err)
	}
	if v != abi.APIVersion {
		s.Close()
		return nil, fmt.Errorf("%s speaks KVM API version %d, want %d", path, v, abi.APIVersion)
	}
	return s, nil
}

// Close closes /dev/kvm. VMs created from it stay valid.
func (s *System) Close() error { return s.h.close() }

// CheckExtension returns KVM_CHECK_EXTENSION's answer for capability c:
// 0 when unsupported, otherwise 1 or a capability-specific number.
func (s *System) CheckExtension(c uintptr) (int, error) {
	r, err := s.h.ioctlVal(abi.KVM_CHECK_EXTENSION, c)
	if err != nil {
		return 0, fmt.Errorf("KVM_CHECK_EXTENSION(%d): %w", c, err)
	}
	return int(r), nil
}

// VCPUMmapSize returns the size of the kvm_run area to mmap from a vCPU fd.
func (s *System) VCPUMmapSize() (int, error) {
	r, err := s.h.ioctlVal(abi.KVM_GET_VCPU_MMAP_SIZE, 0)
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	return int(r), nil
}

// CreateVM creates a VM. The VM owns its descriptor and outlives s.
func (s *System) CreateVM() (*VM, error) {
	mmapSize, err := s.VCPUMmapSize()
	if err != nil {
		return nil, err
	}
	if mmapSize < runSize {
		return nil, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE = %d, smaller than struct kvm_run (%d)", mmapSize, runSize)
	}
	r, err := s.h.ioctlVal(abi.KVM_CREATE_VM, 0)
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	h, err := fileFromFD(r, "kvm-vm")
	if err != nil {
		return nil, err
	}
	return &VM{h: h, mmapSize: mmapSize}, nil
}

// maxCPUIDEntries bounds the buffer growth for CPUID queries; the kernel's
// own limit (KVM_MAX_CPUID_ENTRIES) is 256.
const maxCPUIDEntries = 1024

// cpuidLoop calls an ioctl taking struct kvm_cpuid2, growing the buffer
// while the kernel answers E2BIG.
func cpuidLoop(call func([]uint64) error, name string) ([]abi.CPUIDEntry2, error) {
	for n := 64; n <= maxCPUIDEntries; n *= 2 {
		buf, hdr, entries := cpuidBuf(n)
		err := call(buf)
		if errors.Is(err, unix.E2BIG) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		return slices.Clone(entries[:hdr.Nent]), nil
	}
	return nil, fmt.Errorf("%s: more than %d entries", name, maxCPUIDEntries)
}

// SupportedCPUID returns the CPUID leaves KVM can present to a guest.
func (s *System) SupportedCPUID() ([]abi.CPUIDEntry2, error) {
	return cpuidLoop(func(buf []uint64) error {
		_, err := s.h.ioctlSlice64(abi.KVM_GET_SUPPORTED_CPUID, buf)
		return err
	}, "KVM_GET_SUPPORTED_CPUID")
}

// MSRIndexList returns the MSRs KVM can save and restore
// (KVM_GET_MSR_INDEX_LIST), what a snapshot must carry.
func (s *System) MSRIndexList() ([]uint32, error) {
	n := 256
	for range 4 {
		buf := make([]uint32, 1+n)
		buf[0] = uint32(n)
		_, err := s.h.ioctlSlice32(abi.KVM_GET_MSR_INDEX_LIST, buf)
		if errors.Is(err, unix.E2BIG) {
			// The kernel wrote the count it needs into nmsrs.
			n = int(buf[0])
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST: %w", err)
		}
		return slices.Clone(buf[1 : 1+buf[0]]), nil
	}
	return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST: list kept growing")
}
