package fcapi

import (
	"errors"
	"fmt"
)

// SnapshotType is SnapshotCreateParams.snapshot_type.
type SnapshotType string

// Snapshot types. The empty value means SnapshotFull, Firecracker's default.
const (
	SnapshotFull SnapshotType = "Full"
	SnapshotDiff SnapshotType = "Diff"
)

// SnapshotCreateParams is the body of PUT /snapshot/create, accepted only on
// a paused VM: the VM state goes to snapshot_path, guest memory (the regions,
// raw, concatenated) to mem_file_path.
type SnapshotCreateParams struct {
	SnapshotType SnapshotType `json:"snapshot_type,omitempty"`
	SnapshotPath string       `json:"snapshot_path" fc:"required"`
	MemFilePath  string       `json:"mem_file_path" fc:"required"`
}

// Type returns the snapshot type with Firecracker's default applied.
func (p SnapshotCreateParams) Type() SnapshotType {
	if p.SnapshotType == "" {
		return SnapshotFull
	}
	return p.SnapshotType
}

// Validate reports what is wrong with p.
func (p SnapshotCreateParams) Validate() error {
	if p.SnapshotPath == "" {
		return errors.New("snapshot_path is empty: want the host path for the VM state file")
	}
	if p.MemFilePath == "" {
		return errors.New("mem_file_path is empty: want the host path for the guest memory file")
	}
	if p.SnapshotType != "" && p.SnapshotType != SnapshotFull && p.SnapshotType != SnapshotDiff {
		return fmt.Errorf("snapshot_type is %q: want %q or %q", p.SnapshotType, SnapshotFull, SnapshotDiff)
	}
	return nil
}

// MemBackendType is MemBackend.backend_type.
type MemBackendType string

// Memory backends of PUT /snapshot/load.
const (
	// MemBackendFile maps the memory file (backend_path) privately.
	MemBackendFile MemBackendType = "File"
	// MemBackendUffd connects to the page server listening on the unix
	// socket backend_path and hands it a userfaultfd for guest memory.
	MemBackendUffd MemBackendType = "Uffd"
)

// MemBackend says where restored guest memory comes from.
type MemBackend struct {
	BackendType MemBackendType `json:"backend_type" fc:"required"`
	BackendPath string         `json:"backend_path" fc:"required"`
}

// Validate reports what is wrong with m.
func (m MemBackend) Validate() error {
	if m.BackendType != MemBackendFile && m.BackendType != MemBackendUffd {
		return fmt.Errorf("mem_backend.backend_type is %q: want %q or %q", m.BackendType, MemBackendFile, MemBackendUffd)
	}
	if m.BackendPath == "" {
		return errors.New("mem_backend.backend_path is empty: want the memory file (File) or the page server's socket (Uffd)")
	}
	return nil
}

// NetworkOverride points a restored network interface at another TAP device.
type NetworkOverride struct {
	IfaceID     string `json:"iface_id" fc:"required"`
	HostDevName string `json:"host_dev_name" fc:"required"`
}

// VsockOverride points the restored vsock device at another unix socket.
type VsockOverride struct {
	UDSPath string `json:"uds_path" fc:"required"`
}

// SnapshotLoadParams is the body of PUT /snapshot/load, accepted only as the
// first configuring call on a fresh VMM process. Exactly one of MemBackend
// and the deprecated MemFilePath must be set.
type SnapshotLoadParams struct {
	SnapshotPath string      `json:"snapshot_path" fc:"required"`
	MemBackend   *MemBackend `json:"mem_backend,omitempty"`
	// MemFilePath is deprecated in Firecracker: it means MemBackend
	// {File, MemFilePath}.
	MemFilePath     string `json:"mem_file_path,omitempty"`
	TrackDirtyPages bool   `json:"track_dirty_pages,omitempty"`
	// EnableDiffSnapshots is the deprecated spelling of TrackDirtyPages.
	EnableDiffSnapshots bool              `json:"enable_diff_snapshots,omitempty"`
	ResumeVM            bool              `json:"resume_vm,omitempty"`
	NetworkOverrides    []NetworkOverride `json:"network_overrides,omitempty"`
	VsockOverride       *VsockOverride    `json:"vsock_override,omitempty"`
}

func (SnapshotLoadParams) notImplemented() map[string][]string {
	// huge_pages "Snapshot" keeps the snapshot's own setting, which is
	// what thaw-vmm does anyway.
	return map[string][]string{"clock_realtime": {"false"}, "huge_pages": {`"Snapshot"`}}
}

// Validate reports what is wrong with p.
func (p SnapshotLoadParams) Validate() error {
	if p.SnapshotPath == "" {
		return errors.New("snapshot_path is empty: want the host path of the VM state file")
	}
	switch {
	case p.MemBackend != nil && p.MemFilePath != "":
		return errors.New("too many fields: either mem_backend or mem_file_path exclusively is required")
	case p.MemBackend == nil && p.MemFilePath == "":
		return errors.New("missing field: either mem_backend or mem_file_path is required")
	case p.MemBackend != nil:
		if err := p.MemBackend.Validate(); err != nil {
			return err
		}
	}
	seen := map[string]bool{}
	for i, o := range p.NetworkOverrides {
		if err := CheckID(o.IfaceID); err != nil {
			return fmt.Errorf("network_overrides[%d].iface_id: %w", i, err)
		}
		if o.HostDevName == "" {
			return fmt.Errorf("network_overrides[%d].host_dev_name is empty: want a TAP device name", i)
		}
		if seen[o.IfaceID] {
			return fmt.Errorf("network_overrides: iface_id %q appears twice", o.IfaceID)
		}
		seen[o.IfaceID] = true
	}
	if p.VsockOverride != nil && p.VsockOverride.UDSPath == "" {
		return errors.New("vsock_override.uds_path is empty: want the host path of the vsock unix socket")
	}
	return nil
}

// Normalized returns p with the deprecated fields folded into their
// replacements (MemFilePath into MemBackend, EnableDiffSnapshots into
// TrackDirtyPages) and cleared, so a VMM handles one spelling only.
func (p SnapshotLoadParams) Normalized() SnapshotLoadParams {
	if p.MemBackend == nil && p.MemFilePath != "" {
		p.MemBackend = &MemBackend{BackendType: MemBackendFile, BackendPath: p.MemFilePath}
	} else if p.MemBackend != nil {
		mb := *p.MemBackend
		p.MemBackend = &mb
	}
	p.MemFilePath = ""
	p.TrackDirtyPages = p.TrackDirtyPages || p.EnableDiffSnapshots
	p.EnableDiffSnapshots = false
	return p
}
