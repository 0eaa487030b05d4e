package fcapi

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"unicode"
)

// Limits and defaults Firecracker applies; thaw-vmm may apply tighter ones
// of its own (it answers with a 400 naming the limit).
const (
	// MaxVcpus is the largest vcpu_count Firecracker accepts.
	MaxVcpus = 32
	// DefaultVcpuCount and DefaultMemSizeMib are what GET /machine-config
	// reports before any PUT /machine-config.
	DefaultVcpuCount  = 1
	DefaultMemSizeMib = 128
	// MinGuestCID is the smallest usable vsock context ID: 0-2 are reserved
	// (hypervisor, local, host).
	MinGuestCID = 3
	// MaxBootArgsLen bounds boot_args: the x86 kernel command line is 2048
	// bytes including the terminating NUL, and the VMM appends to it.
	MaxBootArgsLen = 2047
)

// BootSource is the body of PUT /boot-source: the guest kernel (an ELF
// vmlinux), an optional initrd and the kernel command line.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path" fc:"required"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

// Validate reports what is wrong with b, naming the field.
func (b BootSource) Validate() error {
	if b.KernelImagePath == "" {
		return errors.New("kernel_image_path is empty: want the host path of the guest kernel")
	}
	if len(b.BootArgs) > MaxBootArgsLen {
		return fmt.Errorf("boot_args is %d bytes long: want at most %d", len(b.BootArgs), MaxBootArgsLen)
	}
	for i, c := range []byte(b.BootArgs) {
		if c < ' ' || c > '~' {
			return fmt.Errorf("boot_args has byte %#02x at offset %d: want printable ASCII only", c, i)
		}
	}
	return nil
}

// HugePages is MachineConfig.huge_pages: how guest memory is backed.
type HugePages string

// HugePages values, spelled as Firecracker spells them. The empty value
// means HugePagesNone and is omitted on the wire, so requests also work
// against Firecracker versions that predate the field.
const (
	HugePagesNone        HugePages = "None"
	HugePagesTransparent HugePages = "Transparent"
	HugePages2M          HugePages = "2M"
)

// MachineConfig is the body of PUT /machine-config and the answer of
// GET /machine-config.
type MachineConfig struct {
	VcpuCount       int       `json:"vcpu_count" fc:"required"`
	MemSizeMib      int       `json:"mem_size_mib" fc:"required"`
	SMT             bool      `json:"smt"`
	TrackDirtyPages bool      `json:"track_dirty_pages"`
	HugePages       HugePages `json:"huge_pages,omitempty"`
}

func (MachineConfig) notImplemented() map[string][]string {
	return map[string][]string{"cpu_template": {`"None"`}, "gdb_socket_path": nil}
}

// DefaultMachineConfig is the configuration a fresh Firecracker process
// reports: one vCPU, 128 MiB, no SMT, no dirty tracking, no huge pages.
func DefaultMachineConfig() MachineConfig {
	return MachineConfig{VcpuCount: DefaultVcpuCount, MemSizeMib: DefaultMemSizeMib, HugePages: HugePagesNone}
}

// Validate applies Firecracker's rules to m.
func (m MachineConfig) Validate() error {
	if m.VcpuCount < 1 || m.VcpuCount > MaxVcpus {
		return fmt.Errorf("vcpu_count is %d: want 1 to %d", m.VcpuCount, MaxVcpus)
	}
	if m.SMT && m.VcpuCount > 1 && m.VcpuCount%2 == 1 {
		return fmt.Errorf("vcpu_count is %d with smt enabled: want 1 or an even number", m.VcpuCount)
	}
	if m.MemSizeMib < 1 {
		return fmt.Errorf("mem_size_mib is %d: want at least 1", m.MemSizeMib)
	}
	switch m.HugePages {
	case "", HugePagesNone:
	case HugePagesTransparent, HugePages2M:
		if m.MemSizeMib%2 != 0 {
			return fmt.Errorf("mem_size_mib is %d with huge_pages %q: want a multiple of 2", m.MemSizeMib, m.HugePages)
		}
	default:
		return fmt.Errorf("huge_pages is %q: want one of %q, %q, %q", m.HugePages, HugePagesNone, HugePagesTransparent, HugePages2M)
	}
	return nil
}

// CacheType is Drive.cache_type: whether the guest's flush requests reach
// the host file (Writeback) or are acknowledged without syncing (Unsafe).
type CacheType string

// CacheType values. The empty value means CacheUnsafe, Firecracker's default.
const (
	CacheUnsafe    CacheType = "Unsafe"
	CacheWriteback CacheType = "Writeback"
)

// Drive is the body of PUT /drives/{drive_id}: a virtio-blk device backed by
// a host file.
type Drive struct {
	DriveID      string    `json:"drive_id" fc:"required"`
	PathOnHost   string    `json:"path_on_host,omitempty"`
	IsRootDevice bool      `json:"is_root_device" fc:"required"`
	IsReadOnly   bool      `json:"is_read_only,omitempty"`
	PartUUID     string    `json:"partuuid,omitempty"`
	CacheType    CacheType `json:"cache_type,omitempty"`
}

func (Drive) notImplemented() map[string][]string {
	return map[string][]string{"rate_limiter": nil, "io_engine": {`"Sync"`}, "socket": nil}
}

// Validate reports what is wrong with d.
func (d Drive) Validate() error {
	if err := CheckID(d.DriveID); err != nil {
		return fmt.Errorf("drive_id: %w", err)
	}
	if d.PathOnHost == "" {
		return fmt.Errorf("drive %q: path_on_host is empty: want the host path of the backing file", d.DriveID)
	}
	switch d.CacheType {
	case "", CacheUnsafe, CacheWriteback:
	default:
		return fmt.Errorf("drive %q: cache_type is %q: want %q or %q", d.DriveID, d.CacheType, CacheUnsafe, CacheWriteback)
	}
	return nil
}

// PartialDrive is the body of PATCH /drives/{drive_id} (post-boot only):
// it points an existing drive at another backing file, e.g. a restored
// sandbox's own copy-on-write disk before the VM resumes.
type PartialDrive struct {
	DriveID    string `json:"drive_id" fc:"required"`
	PathOnHost string `json:"path_on_host,omitempty"`
}

func (PartialDrive) notImplemented() map[string][]string {
	return map[string][]string{"rate_limiter": nil}
}

// Validate reports what is wrong with d.
func (d PartialDrive) Validate() error {
	if err := CheckID(d.DriveID); err != nil {
		return fmt.Errorf("drive_id: %w", err)
	}
	if d.PathOnHost == "" {
		return fmt.Errorf("drive %q: path_on_host is empty: it is the only field thaw-vmm updates; give the new backing file", d.DriveID)
	}
	return nil
}

// Vsock is the body of PUT /vsock: a virtio-vsock device whose host side is
// the unix socket uds_path (host-initiated connections: connect to it and
// write "CONNECT <port>\n"; guest-initiated: the VMM connects to
// "<uds_path>_<port>").
type Vsock struct {
	GuestCID uint32 `json:"guest_cid" fc:"required"`
	UDSPath  string `json:"uds_path" fc:"required"`
	// VsockID is deprecated in Firecracker and has no effect.
	VsockID string `json:"vsock_id,omitempty"`
}

// Validate reports what is wrong with v.
func (v Vsock) Validate() error {
	if v.GuestCID < MinGuestCID {
		return fmt.Errorf("guest_cid is %d: want at least %d (0 to 2 are reserved)", v.GuestCID, MinGuestCID)
	}
	if v.UDSPath == "" {
		return errors.New("uds_path is empty: want the host path of the vsock unix socket")
	}
	return nil
}

// NetworkInterface is the body of PUT /network-interfaces/{iface_id}: a
// virtio-net device backed by a host TAP device.
type NetworkInterface struct {
	IfaceID     string `json:"iface_id" fc:"required"`
	HostDevName string `json:"host_dev_name" fc:"required"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

func (NetworkInterface) notImplemented() map[string][]string {
	return map[string][]string{"mtu": nil, "rx_rate_limiter": nil, "tx_rate_limiter": nil}
}

// Validate reports what is wrong with n.
func (n NetworkInterface) Validate() error {
	if err := CheckID(n.IfaceID); err != nil {
		return fmt.Errorf("iface_id: %w", err)
	}
	if n.HostDevName == "" || len(n.HostDevName) > 15 {
		return fmt.Errorf("interface %q: host_dev_name %q: want a TAP device name of 1 to 15 bytes", n.IfaceID, n.HostDevName)
	}
	if n.GuestMAC != "" {
		if hw, err := net.ParseMAC(n.GuestMAC); err != nil || len(hw) != 6 || strings.Count(n.GuestMAC, ":") != 5 {
			return fmt.Errorf("interface %q: guest_mac %q: want six colon-separated hex bytes, e.g. 06:00:ac:10:00:02", n.IfaceID, n.GuestMAC)
		}
	}
	return nil
}

// ActionType is InstanceActionInfo.action_type.
type ActionType string

// Action types of PUT /actions.
const (
	ActionInstanceStart  ActionType = "InstanceStart"
	ActionSendCtrlAltDel ActionType = "SendCtrlAltDel"
	ActionFlushMetrics   ActionType = "FlushMetrics"
)

// InstanceActionInfo is the body of PUT /actions.
type InstanceActionInfo struct {
	ActionType ActionType `json:"action_type" fc:"required"`
}

// Validate reports an unknown action type.
func (a InstanceActionInfo) Validate() error {
	switch a.ActionType {
	case ActionInstanceStart, ActionSendCtrlAltDel, ActionFlushMetrics:
		return nil
	}
	return fmt.Errorf("action_type is %q: want one of %q, %q, %q", a.ActionType, ActionFlushMetrics, ActionInstanceStart, ActionSendCtrlAltDel)
}

// VMState is the state PATCH /vm asks for.
type VMState string

// VMState values.
const (
	VMPaused  VMState = "Paused"
	VMResumed VMState = "Resumed"
)

// VM is the body of PATCH /vm.
type VM struct {
	State VMState `json:"state" fc:"required"`
}

// Validate reports an unknown state.
func (v VM) Validate() error {
	if v.State != VMPaused && v.State != VMResumed {
		return fmt.Errorf("state is %q: want %q or %q", v.State, VMPaused, VMResumed)
	}
	return nil
}

// InstanceState is InstanceInfo.state, spelled as Firecracker spells it.
type InstanceState string

// Instance states.
const (
	StateNotStarted InstanceState = "Not started"
	StateRunning    InstanceState = "Running"
	StatePaused     InstanceState = "Paused"
)

// InstanceInfo is the answer of GET /.
type InstanceInfo struct {
	AppName    string        `json:"app_name" fc:"required"`
	ID         string        `json:"id" fc:"required"`
	State      InstanceState `json:"state" fc:"required"`
	VMMVersion string        `json:"vmm_version" fc:"required"`
}

// Version is the answer of GET /version.
type Version struct {
	FirecrackerVersion string `json:"firecracker_version" fc:"required"`
}

// Error is the body of every 4xx/5xx answer.
type Error struct {
	FaultMessage string `json:"fault_message" fc:"required"`
}

// CheckID applies Firecracker's rule for resource IDs in paths (drive_id,
// iface_id): not empty, only letters, digits and underscores.
func CheckID(id string) error {
	if id == "" {
		return errors.New("the ID is empty: want letters, digits and underscores")
	}
	for _, r := range id {
		if r != '_' && !unicode.IsLetter(r) && !unicode.IsNumber(r) {
			return fmt.Errorf("the ID %q has %q: want only letters, digits and underscores", id, r)
		}
	}
	return nil
}
