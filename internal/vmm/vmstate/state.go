package vmstate

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	abi "github.com/thawvm/thaw/internal/abi/kvm"
)

// Limits Validate applies, beyond which a state is a bug or a wrong file.
const (
	MaxVCPUs        = 256
	MaxRegions      = 64
	MaxDevices      = 64
	MaxMSRs         = 4096
	MaxCPUIDEntries = 256 // KVM_MAX_CPUID_ENTRIES
	MaxXSaveSize    = 1 << 20
	PageSize        = 4096
)

// State is everything a snapshot saves except guest memory.
type State struct {
	Machine Machine `json:"machine"`
	// Memory lists the guest RAM regions in memory-file order: region i
	// occupies the file's bytes [FileOffset, FileOffset+Size).
	Memory  []Region `json:"memory"`
	VM      VM       `json:"vm"`
	VCPUs   []VCPU   `json:"vcpus"`
	Devices []Device `json:"devices,omitempty"`
}

// Machine is the machine configuration the snapshot was taken with.
type Machine struct {
	VCPUCount  int  `json:"vcpu_count"`
	MemSizeMib int  `json:"mem_size_mib"`
	SMT        bool `json:"smt,omitempty"`
}

// Region is one guest RAM region and its place in the memory file.
type Region struct {
	GuestPhysAddr uint64 `json:"guest_phys_addr"`
	Size          uint64 `json:"size"`
	FileOffset    uint64 `json:"file_offset"`
}

// VM is the per-VM kernel state: the in-kernel interrupt controllers, the
// PIT and kvmclock.
type VM struct {
	PICMaster Kernel[abi.IRQChip]   `json:"pic_master"`
	PICSlave  Kernel[abi.IRQChip]   `json:"pic_slave"`
	IOAPIC    Kernel[abi.IRQChip]   `json:"ioapic"`
	PIT       Kernel[abi.PITState2] `json:"pit"`
	Clock     Kernel[abi.ClockData] `json:"clock"`
}

// VCPU is one vCPU's kernel state, in the order snapshot restores it.
type VCPU struct {
	ID        int                    `json:"id"`
	CPUID     []CPUIDEntry           `json:"cpuid"`
	MPState   uint32                 `json:"mp_state"`
	Regs      Kernel[abi.Regs]       `json:"regs"`
	Sregs     Kernel[abi.Sregs]      `json:"sregs"`
	XSave     []byte                 `json:"xsave"`
	XCRs      Kernel[abi.XCRs]       `json:"xcrs"`
	DebugRegs Kernel[abi.DebugRegs]  `json:"debugregs"`
	LAPIC     Kernel[abi.LAPICState] `json:"lapic"`
	MSRs      []MSR                  `json:"msrs"`
	Events    Kernel[abi.VCPUEvents] `json:"vcpu_events"`
	// TSCKHz is the vCPU's TSC frequency, 0 when unknown.
	TSCKHz uint32 `json:"tsc_khz,omitempty"`
}

// CPUIDEntry is one struct kvm_cpuid_entry2 without its padding.
type CPUIDEntry struct {
	Function uint32 `json:"function"`
	Index    uint32 `json:"index"`
	Flags    uint32 `json:"flags"`
	EAX      uint32 `json:"eax"`
	EBX      uint32 `json:"ebx"`
	ECX      uint32 `json:"ecx"`
	EDX      uint32 `json:"edx"`
}

// MSR is one model-specific register's value.
type MSR struct {
	Index uint32 `json:"index"`
	Data  uint64 `json:"data"`
}

// Device is one emulated device: what it is, where the guest finds it,
// the configuration it was created with (the API body, e.g. a
// Firecracker Drive) and its plain-data state. Config and State are JSON
// owned by the device's package; vmstate only carries them.
type Device struct {
	Kind     string          `json:"kind"` // e.g. "serial", "virtio-blk", "virtio-vsock"
	ID       string          `json:"id"`
	MMIOBase uint64          `json:"mmio_base,omitempty"`
	GSI      uint32          `json:"gsi,omitempty"`
	Config   json.RawMessage `json:"config,omitempty"`
	// Transport is the virtio-mmio transport's state, for virtio devices.
	Transport json.RawMessage `json:"transport,omitempty"`
	State     json.RawMessage `json:"state,omitempty"`
}

// Kernel holds a kernel uapi struct (an internal/abi/kvm mirror) and
// encodes it as the struct's exact bytes, base64 in JSON. T must have no
// implicit padding (every abi mirror spells its padding out), so
// binary.Size(T) is the kernel's sizeof.
type Kernel[T any] struct{ V T }

// K wraps v.
func K[T any](v T) Kernel[T] { return Kernel[T]{V: v} }

// MarshalJSON encodes the struct's bytes.
func (k Kernel[T]) MarshalJSON() ([]byte, error) {
	b, err := binary.Append(nil, binary.LittleEndian, k.V)
	if err != nil {
		return nil, fmt.Errorf("encoding %T: %w", k.V, err)
	}
	return json.Marshal(b)
}

// UnmarshalJSON decodes the struct's bytes, which must be exactly its size.
func (k *Kernel[T]) UnmarshalJSON(data []byte) error {
	var b []byte
	if err := json.Unmarshal(data, &b); err != nil {
		return fmt.Errorf("decoding %T: %w", k.V, err)
	}
	if want := binary.Size(k.V); len(b) != want {
		return fmt.Errorf("decoding %T: %d bytes, want %d", k.V, len(b), want)
	}
	if _, err := binary.Decode(b, binary.LittleEndian, &k.V); err != nil {
		return fmt.Errorf("decoding %T: %w", k.V, err)
	}
	return nil
}

// MemSize returns the guest RAM size in bytes, the memory file's size.
func (s *State) MemSize() uint64 {
	var n uint64
	for _, r := range s.Memory {
		n += r.Size
	}
	return n
}

// Validate checks the state's internal consistency; the error names the
// first problem.
func (s *State) Validate() error {
	m := s.Machine
	if m.VCPUCount < 1 || m.VCPUCount > MaxVCPUs {
		return fmt.Errorf("machine.vcpu_count is %d: want 1 to %d", m.VCPUCount, MaxVCPUs)
	}
	if m.MemSizeMib < 1 {
		return fmt.Errorf("machine.mem_size_mib is %d: want at least 1", m.MemSizeMib)
	}
	if len(s.Memory) == 0 || len(s.Memory) > MaxRegions {
		return fmt.Errorf("%d memory regions: want 1 to %d", len(s.Memory), MaxRegions)
	}
	var off, end uint64
	for i, r := range s.Memory {
		if r.Size == 0 || r.Size%PageSize != 0 || r.GuestPhysAddr%PageSize != 0 {
			return fmt.Errorf("memory region %d (gpa %#x size %#x): want a non-empty, page-aligned region", i, r.GuestPhysAddr, r.Size)
		}
		if r.GuestPhysAddr+r.Size < r.GuestPhysAddr {
			return fmt.Errorf("memory region %d (gpa %#x size %#x) overflows", i, r.GuestPhysAddr, r.Size)
		}
		if i > 0 && r.GuestPhysAddr < end {
			return fmt.Errorf("memory region %d (gpa %#x) overlaps or precedes region %d, which ends at %#x", i, r.GuestPhysAddr, i-1, end)
		}
		if r.FileOffset != off {
			return fmt.Errorf("memory region %d has file offset %#x, want %#x (regions are concatenated in the memory file)", i, r.FileOffset, off)
		}
		off += r.Size
		end = r.GuestPhysAddr + r.Size
	}
	if want := uint64(m.MemSizeMib) << 20; off != want {
		return fmt.Errorf("memory regions total %d bytes, machine.mem_size_mib says %d", off, want)
	}
	if len(s.VCPUs) != m.VCPUCount {
		return fmt.Errorf("%d vCPU states for machine.vcpu_count %d", len(s.VCPUs), m.VCPUCount)
	}
	for i, c := range s.VCPUs {
		if c.ID != i {
			return fmt.Errorf("vCPU state %d has id %d, want %d", i, c.ID, i)
		}
		if len(c.CPUID) == 0 || len(c.CPUID) > MaxCPUIDEntries {
			return fmt.Errorf("vCPU %d: %d CPUID entries, want 1 to %d", i, len(c.CPUID), MaxCPUIDEntries)
		}
		if len(c.XSave) < abi.KVM_XSAVE_LEGACY_SIZE || len(c.XSave) > MaxXSaveSize || len(c.XSave)%4 != 0 {
			return fmt.Errorf("vCPU %d: XSAVE area of %d bytes, want a multiple of 4 from %d to %d", i, len(c.XSave), abi.KVM_XSAVE_LEGACY_SIZE, MaxXSaveSize)
		}
		if len(c.MSRs) > MaxMSRs {
			return fmt.Errorf("vCPU %d: %d MSRs, more than %d", i, len(c.MSRs), MaxMSRs)
		}
		if c.MPState > abi.KVM_MP_STATE_SIPI_RECEIVED {
			return fmt.Errorf("vCPU %d: unknown MP state %d", i, c.MPState)
		}
	}
	if len(s.Devices) > MaxDevices {
		return fmt.Errorf("%d devices, more than %d", len(s.Devices), MaxDevices)
	}
	seen := map[string]bool{}
	for i, d := range s.Devices {
		if d.Kind == "" || d.ID == "" {
			return fmt.Errorf("device %d: kind %q and id %q must both be set", i, d.Kind, d.ID)
		}
		key := d.Kind + "/" + d.ID
		if seen[key] {
			return fmt.Errorf("device %d: %s appears twice", i, key)
		}
		seen[key] = true
	}
	return nil
}

// Encode validates s and returns it sealed in the envelope.
func Encode(s *State) ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("encoding vmstate: %w", err)
	}
	payload, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("encoding vmstate: %w", err)
	}
	return Seal(payload), nil
}

// Decode opens the envelope of b (see Open; maxPayload 0 means
// DefaultMaxPayload), decodes the payload strictly (unknown fields and
// trailing data are errors) and validates the result.
func Decode(b []byte, maxPayload uint64) (*State, error) {
	payload, err := Open(b, maxPayload)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	var s State
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("%w: decoding payload: %v", ErrCorrupt, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: data after the payload's JSON object", ErrCorrupt)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return &s, nil
}

// WriteFile encodes s to path atomically: a temporary file in the same
// directory, synced, then renamed over path, so a crash never leaves a
// half-written state under the final name.
func WriteFile(path string, s *State) error {
	b, err := Encode(s)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("writing vmstate %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("writing vmstate %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("syncing vmstate %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing vmstate %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing vmstate %s: %w", path, err)
	}
	return nil
}

// ReadFile reads and decodes the vmstate file at path. It looks at the
// header before reading the rest, so passing a multi-GiB memory file by
// mistake fails at once instead of reading it.
func ReadFile(path string, maxPayload uint64) (*State, error) {
	if maxPayload == 0 {
		maxPayload = DefaultMaxPayload
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading vmstate: %w", err)
	}
	defer f.Close()
	var hdr [HeaderSize]byte
	n, err := io.ReadFull(f, hdr[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("reading vmstate %s: %w", path, err)
	}
	_, err = Open(hdr[:n], maxPayload)
	switch {
	case err == nil || n == HeaderSize && errors.Is(err, ErrTruncated):
		// The header is sane, so its payload size is within maxPayload.
	case errors.Is(err, ErrTruncated) || errors.Is(err, ErrCorrupt):
		// The file ends inside the header, or the header is corrupt:
		// the header alone says what is wrong.
		_, err := Decode(hdr[:n], maxPayload)
		return nil, fmt.Errorf("vmstate %s: %w", path, err)
	default:
		return nil, fmt.Errorf("vmstate %s: %w", path, err)
	}
	// One buffer for the whole file, and a byte more so that trailing
	// data is still noticed. Reading in growing chunks (io.ReadAll) and
	// then joining header and payload allocated three times the file's
	// size, which stayed resident in every idle VMM: none runs a GC
	// before it idles (docs/benchmarks/thawd.md).
	b := make([]byte, HeaderSize+binary.LittleEndian.Uint64(hdr[16:])+1)
	copy(b, hdr[:])
	m, err := io.ReadFull(f, b[HeaderSize:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("reading vmstate %s: %w", path, err)
	}
	s, err := Decode(b[:HeaderSize+m], maxPayload)
	if err != nil {
		return nil, fmt.Errorf("vmstate %s: %w", path, err)
	}
	return s, nil
}
