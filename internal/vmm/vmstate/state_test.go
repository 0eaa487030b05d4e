package vmstate

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	abi "github.com/thawvm/thaw/internal/abi/kvm"
)

// sample returns a valid two-vCPU state over two regions with every kernel
// struct holding recognisable non-zero bytes.
func sample() *State {
	var vm VM
	vm.PICMaster.V.ChipID = abi.KVM_IRQCHIP_PIC_MASTER
	vm.PICMaster.V.Chip[0] = 0x11
	vm.PICSlave.V.ChipID = abi.KVM_IRQCHIP_PIC_SLAVE
	vm.IOAPIC.V.ChipID = abi.KVM_IRQCHIP_IOAPIC
	vm.IOAPIC.V.Chip[511] = 0x22
	vm.PIT.V.Channels[2].CountLoadTime = -12345
	vm.Clock.V.Clock = 987654321
	s := &State{
		Machine: Machine{VCPUCount: 2, MemSizeMib: 3072 + 16},
		Memory: []Region{
			{GuestPhysAddr: 0, Size: 3 << 30},
			{GuestPhysAddr: 4 << 30, Size: 16 << 20, FileOffset: 3 << 30},
		},
		VM: vm,
		Devices: []Device{
			{Kind: "virtio-blk", ID: "rootfs", MMIOBase: 0xd0000000, GSI: 5,
				Config: json.RawMessage(`{"drive_id":"rootfs"}`), State: json.RawMessage(`{"sectors":8}`)},
		},
	}
	for i := range 2 {
		c := VCPU{ID: i, MPState: abi.KVM_MP_STATE_RUNNABLE, XSave: bytes.Repeat([]byte{byte(i + 1)}, 4096), TSCKHz: 2_000_000}
		c.CPUID = []CPUIDEntry{{Function: 0, EAX: 0xd}, {Function: 7, Index: 0, Flags: abi.KVM_CPUID_FLAG_SIGNIFCANT_INDEX, EBX: 0x1}}
		c.Regs.V.RIP = 0x100000 + uint64(i)
		c.Regs.V.RFLAGS = abi.X86_EFLAGS_FIXED
		c.Sregs.V.CS.Selector = 0x10
		c.Sregs.V.EFER = abi.EFER_LME | abi.EFER_LMA
		c.XCRs.V.NrXCRs = 1
		c.XCRs.V.XCRs[0].Value = 3
		c.DebugRegs.V.DR7 = 0x400
		c.LAPIC.V.Regs[0x20] = byte(i)
		c.MSRs = []MSR{{Index: abi.MSR_IA32_TSC, Data: 1 << 40}, {Index: abi.MSR_KERNEL_GS_BASE, Data: 0xffff888000000000}}
		c.Events.V.ExceptionPayload = 0xabcdef
		c.Events.V.Flags = abi.KVM_VCPUEVENT_VALID_NMI_PENDING
		s.VCPUs = append(s.VCPUs, c)
	}
	return s
}

func TestRoundTrip(t *testing.T) {
	s := sample()
	b, err := Encode(s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, s) {
		t.Errorf("decoded state differs from the encoded one:\n got %+v\nwant %+v", got, s)
	}

	path := filepath.Join(t.TempDir(), "vmstate")
	if err := WriteFile(path, s); err != nil {
		t.Fatal(err)
	}
	got, err = ReadFile(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, s) {
		t.Errorf("state read back from %s differs from the written one", path)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("WriteFile left %d files in its directory, want 1 (no temporary leftovers)", len(entries))
	}
}

// TestKernelSizes checks that Kernel[T] encodes each kernel struct with
// the kernel's sizeof (asserted against the kernel in internal/abi/kvm).
func TestKernelSizes(t *testing.T) {
	tests := []struct {
		name string
		v    any
		want int
	}{
		{"kvm_regs", abi.Regs{}, 144},
		{"kvm_sregs", abi.Sregs{}, 312},
		{"kvm_xcrs", abi.XCRs{}, 392},
		{"kvm_debugregs", abi.DebugRegs{}, 128},
		{"kvm_lapic_state", abi.LAPICState{}, 1024},
		{"kvm_vcpu_events", abi.VCPUEvents{}, 64},
		{"kvm_irqchip", abi.IRQChip{}, 520},
		{"kvm_pit_state2", abi.PITState2{}, 112},
		{"kvm_clock_data", abi.ClockData{}, 48},
	}
	for _, tt := range tests {
		if got := binary.Size(tt.v); got != tt.want {
			t.Errorf("binary.Size(%s): got %d, want %d (implicit padding in the abi mirror?)", tt.name, got, tt.want)
		}
	}
	// A kernel struct of the wrong length is refused by name.
	var k Kernel[abi.Regs]
	err := json.Unmarshal([]byte(`"AAAA"`), &k)
	if err == nil || !strings.Contains(err.Error(), "want 144") {
		t.Errorf("decoding a 3-byte kvm_regs: got %v, want an error saying 144 bytes", err)
	}
}

func TestDecodeErrors(t *testing.T) {
	good, err := Encode(sample())
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	mutate := func(f func(b []byte) []byte) []byte {
		return f(bytes.Clone(good))
	}
	reseal := func(b []byte) []byte { // fix the header checksum after editing the header
		return append(resealHeader(b[:HeaderSize]), b[HeaderSize:]...)
	}
	tests := []struct {
		name    string
		in      []byte
		max     uint64
		wantErr error
		wantMsg string
	}{
		{"empty", nil, 0, ErrNotVMState, "does not start with"},
		{"memory file", make([]byte, 4096), 0, ErrNotVMState, "memory file"},
		{"short header", good[:20], 0, ErrTruncated, "shorter than the 32-byte header"},
		{"header bit flip", mutate(func(b []byte) []byte { b[17] ^= 1; return b }), 0, ErrCorrupt, "header checksum"},
		{"newer version", mutate(func(b []byte) []byte { le.PutUint32(b[8:], 2); return reseal(b) }), 0, ErrVersion, "version 2, this build reads version 1"},
		{"flags", mutate(func(b []byte) []byte { le.PutUint32(b[12:], 1); return reseal(b) }), 0, ErrVersion, "flags"},
		{"too large", good, 100, ErrTooLarge, "limit"},
		{"truncated", good[:len(good)-10], 0, ErrTruncated, "file holds"},
		{"trailing", append(bytes.Clone(good), 0), 0, ErrCorrupt, "after the"},
		{"payload bit flip", mutate(func(b []byte) []byte { b[HeaderSize+40] ^= 0x20; return b }), 0, ErrCorrupt, "payload checksum"},
		{"unknown field", sealJSON(t, `{"machine":{"vcpu_count":1,"mem_size_mib":1},"bogus":1}`), 0, ErrCorrupt, "bogus"},
		{"invalid state", sealJSON(t, `{"machine":{"vcpu_count":1,"mem_size_mib":1}}`), 0, ErrCorrupt, "memory regions"},
		{"two objects", sealJSON(t, `{} {}`), 0, ErrCorrupt, "after the payload"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode(tt.in, tt.max)
			if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Decode: got %v, want %v containing %q", err, tt.wantErr, tt.wantMsg)
			}
		})
	}
}

func resealHeader(h []byte) []byte {
	h = bytes.Clone(h)
	binary.LittleEndian.PutUint32(h[28:], crc32c(h[:28]))
	return h
}

func sealJSON(t *testing.T, s string) []byte {
	t.Helper()
	return Seal([]byte(s))
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(s *State)
		want string
	}{
		{"no vcpus", func(s *State) { s.Machine.VCPUCount = 0 }, "vcpu_count is 0"},
		{"vcpu count mismatch", func(s *State) { s.VCPUs = s.VCPUs[:1] }, "1 vCPU states for machine.vcpu_count 2"},
		{"vcpu id", func(s *State) { s.VCPUs[1].ID = 5 }, "has id 5, want 1"},
		{"size mismatch", func(s *State) { s.Machine.MemSizeMib = 128 }, "total"},
		{"gap in file", func(s *State) { s.Memory[1].FileOffset += 4096 }, "concatenated"},
		{"overlap", func(s *State) { s.Memory[1].GuestPhysAddr = 1 << 30 }, "overlaps"},
		{"unaligned", func(s *State) { s.Memory[0].Size -= 1 }, "page-aligned"},
		{"small xsave", func(s *State) { s.VCPUs[0].XSave = s.VCPUs[0].XSave[:100] }, "XSAVE"},
		{"no cpuid", func(s *State) { s.VCPUs[0].CPUID = nil }, "CPUID"},
		{"mp state", func(s *State) { s.VCPUs[0].MPState = 99 }, "MP state"},
		{"duplicate device", func(s *State) { s.Devices = append(s.Devices, s.Devices[0]) }, "twice"},
		{"unnamed device", func(s *State) { s.Devices[0].ID = "" }, "must both be set"},
	}
	for _, tt := range tests {
		s := sample()
		tt.edit(s)
		err := s.Validate()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Validate got %v, want an error containing %q", tt.name, err, tt.want)
		}
		if _, err := Encode(s); err == nil {
			t.Errorf("%s: Encode accepted an invalid state", tt.name)
		}
	}
}

func TestReadFileRefusesMemoryFileQuickly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mem")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	// A sparse 8 GiB file: reading it whole would take long and allocate.
	if err := f.Truncate(8 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, err = ReadFile(path, 0)
	if !errors.Is(err, ErrNotVMState) || !strings.Contains(err.Error(), path) {
		t.Errorf("ReadFile of a memory file: got %v, want ErrNotVMState naming %s", err, path)
	}
	if _, err := ReadFile(filepath.Join(t.TempDir(), "missing"), 0); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadFile of a missing file: got %v, want os.ErrNotExist", err)
	}
}

// TestReadFileErrors checks ReadFile on files damaged after the header was
// read: each names the file and says what is wrong, as Decode does.
func TestReadFileErrors(t *testing.T) {
	good, err := Encode(sample())
	if err != nil {
		t.Fatal(err)
	}
	huge := bytes.Clone(good[:HeaderSize])
	binary.LittleEndian.PutUint64(huge[16:], 1<<60) // header checksum now wrong
	tests := []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrNotVMState},
		{"inside the header", good[:HeaderSize-1], ErrTruncated},
		{"header only", good[:HeaderSize], ErrTruncated},
		{"payload cut short", good[:len(good)-1], ErrTruncated},
		{"a byte after the payload", append(bytes.Clone(good), 0), ErrCorrupt},
		{"corrupt header announcing 1 EiB", huge, ErrCorrupt},
	}
	for _, tt := range tests {
		path := filepath.Join(t.TempDir(), "vmstate")
		if err := os.WriteFile(path, tt.data, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := ReadFile(path, 0)
		if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: got %v, want %v naming %s", tt.name, err, tt.want, path)
		}
	}
}

// TestReadFileReadsOnce checks that ReadFile allocates the file once on
// top of what decoding it allocates: the VMM never collects this garbage
// before it idles, so every extra copy stays resident.
func TestReadFileReadsOnce(t *testing.T) {
	s := sample()
	s.VCPUs[0].XSave = make([]byte, 4096) // the size of a real vCPU's state
	path := filepath.Join(t.TempDir(), "vmstate")
	if err := WriteFile(path, s); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	allocated := func(f func()) uint64 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		f()
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	decode := allocated(func() {
		if _, err := Decode(data, 0); err != nil {
			t.Fatal(err)
		}
	})
	read := allocated(func() {
		if _, err := ReadFile(path, 0); err != nil {
			t.Fatal(err)
		}
	})
	// The file's buffer, rounded up to a size class (at most 1/8 more),
	// and 2 KiB for the path, the os.File and the error-free rest.
	if limit := decode + uint64(len(data))*9/8 + 2048; read > limit {
		t.Errorf("ReadFile of a %d-byte file allocated %d bytes, Decode %d: got %d bytes for reading, want at most %d", len(data), read, decode, read-decode, limit-decode)
	}
}
