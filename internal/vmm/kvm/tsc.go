package kvm

import (
	"fmt"

	abi "github.com/thawvm/thaw/internal/abi/kvm"
)

// TSCKHz returns the vCPU's TSC frequency in kHz (KVM_GET_TSC_KHZ), which
// a snapshot records so a restore on another host can ask for the same.
func (c *VCPU) TSCKHz() (uint32, error) {
	r, err := c.h.ioctlVal(abi.KVM_GET_TSC_KHZ, 0)
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_TSC_KHZ vcpu %d: %w", c.id, err)
	}
	return uint32(r), nil
}

// SetTSCKHz sets the vCPU's TSC frequency in kHz (KVM_SET_TSC_KHZ); KVM
// scales the guest's TSC when the host's differs (KVM_CAP_TSC_CONTROL).
func (c *VCPU) SetTSCKHz(khz uint32) error {
	if _, err := c.h.ioctlVal(abi.KVM_SET_TSC_KHZ, uintptr(khz)); err != nil {
		return fmt.Errorf("KVM_SET_TSC_KHZ vcpu %d to %d kHz: %w", c.id, khz, err)
	}
	return nil
}
