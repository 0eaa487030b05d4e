package boot

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thawvm/thaw/guest/probe"
	abi "github.com/thawvm/thaw/internal/abi/boot"
	"github.com/thawvm/thaw/internal/vmm/memory"
)

// segment is one PT_LOAD or PT_NOTE segment for makeELF.
type seg struct {
	typ          uint32
	paddr, memsz uint64
	data         []byte
}

// makeELF builds a minimal x86-64 executable ELF with the given entry and
// segments, so the loader's checks can be tested without a toolchain.
func makeELF(entry uint64, machine uint16, segs ...seg) []byte {
	le := binary.LittleEndian
	const ehSize, phSize = 64, 56
	var b bytes.Buffer
	h := make([]byte, ehSize)
	copy(h, []byte{0x7f, 'E', 'L', 'F', 2, 1, 1})
	le.PutUint16(h[16:], 2) // ET_EXEC
	le.PutUint16(h[18:], machine)
	le.PutUint32(h[20:], 1)
	le.PutUint64(h[24:], entry)
	le.PutUint64(h[32:], ehSize)
	le.PutUint16(h[52:], ehSize)
	le.PutUint16(h[54:], phSize)
	le.PutUint16(h[56:], uint16(len(segs)))
	le.PutUint16(h[58:], 64)
	b.Write(h)
	off := uint64(ehSize + phSize*len(segs))
	for _, s := range segs {
		p := make([]byte, phSize)
		le.PutUint32(p[0:], s.typ)
		le.PutUint32(p[4:], 7)
		le.PutUint64(p[8:], off)
		le.PutUint64(p[16:], s.paddr)
		le.PutUint64(p[24:], s.paddr)
		le.PutUint64(p[32:], uint64(len(s.data)))
		le.PutUint64(p[40:], s.memsz)
		b.Write(p)
		off += uint64(len(s.data))
	}
	for _, s := range segs {
		b.Write(s.data)
	}
	return b.Bytes()
}

// xenNote is an ELF note "Xen" of type XEN_ELFNOTE_PHYS32_ENTRY.
func xenNote(entry uint32) []byte {
	le := binary.LittleEndian
	n := make([]byte, 12+4+4)
	le.PutUint32(n[0:], 4) // namesz "Xen\0"
	le.PutUint32(n[4:], 4)
	le.PutUint32(n[8:], abi.XenElfnotePhys32Entry)
	copy(n[12:], "Xen\x00")
	le.PutUint32(n[16:], entry)
	return n
}

const ptLoad, ptNote = 1, 4

func newMem(t *testing.T, size uint64) *memory.Memory {
	t.Helper()
	m, err := memory.New(size, memory.Backing{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func writeFile(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadLinuxBootProtocol(t *testing.T) {
	code := []byte{0xf4, 0x90, 0x90, 0x90}
	kernel := writeFile(t, "vmlinux", makeELF(0x1000000, 62, seg{ptLoad, 0x1000000, 0x2000, code}))
	initrd := bytes.Repeat([]byte{0xab}, 10000)
	initrdPath := writeFile(t, "initrd", initrd)
	mem := newMem(t, 64<<20)
	// Dirty the bss area to check the loader zeroes it.
	bss, _ := mem.Slice(0x1000000, 0x2000)
	for i := range bss {
		bss[i] = 0xcc
	}
	const cmdline = "console=ttyS0 root=/dev/vda"
	e, err := Load(mem, Config{Kernel: kernel, Initrd: initrdPath, Cmdline: cmdline, VCPUs: 2})
	if err != nil {
		t.Fatal(err)
	}
	if e.PVH || e.RIP != 0x1000000 || e.BootInfo != ZeroPageAddr {
		t.Errorf("entry: got %+v, want 64-bit entry at 0x1000000 with the zero page", e)
	}
	if !bytes.Equal(bss[:4], code) || bytes.ContainsFunc(bss[4:], func(r rune) bool { return r != 0 }) {
		t.Errorf("kernel segment: code or zeroed bss wrong")
	}
	zp, _ := mem.Slice(ZeroPageAddr, abi.ZeroPageSize)
	le := binary.LittleEndian
	checks := []struct {
		name      string
		got, want uint64
	}{
		{"boot_flag", uint64(le.Uint16(zp[abi.BootFlag:])), abi.BootFlagMagic},
		{"header", uint64(le.Uint32(zp[abi.Header:])), abi.HeaderMagic},
		{"type_of_loader", uint64(zp[abi.TypeOfLoader]), abi.LoaderTypeUnknown},
		{"cmd_line_ptr", uint64(le.Uint32(zp[abi.CmdLinePtr:])), CmdlineAddr},
		{"cmdline_size", uint64(le.Uint32(zp[abi.CmdlineSize:])), uint64(len(cmdline))},
		{"ramdisk_size", uint64(le.Uint32(zp[abi.RamdiskSize:])), uint64(len(initrd))},
		{"ramdisk_image alignment", uint64(le.Uint32(zp[abi.RamdiskImage:])) % 4096, 0},
		{"e820_entries", uint64(zp[abi.E820Entries]), 2},
		{"e820[0].size", le.Uint64(zp[abi.E820Table+8:]), EBDAStart},
		{"e820[1].addr", le.Uint64(zp[abi.E820Table+20:]), HighMemStart},
		{"e820[1].size", le.Uint64(zp[abi.E820Table+28:]), 64<<20 - HighMemStart},
		{"e820[1].type", uint64(le.Uint32(zp[abi.E820Table+36:])), abi.E820TypeRAM},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("zero page %s: got %#x, want %#x", c.name, c.got, c.want)
		}
	}
	gotInitrd, _ := mem.Slice(uint64(le.Uint32(zp[abi.RamdiskImage:])), uint64(len(initrd)))
	if !bytes.Equal(gotInitrd, initrd) {
		t.Errorf("initrd contents differ at the address the zero page gives")
	}
	gotCmd, _ := mem.Slice(CmdlineAddr, uint64(len(cmdline)+1))
	if string(gotCmd) != cmdline+"\x00" {
		t.Errorf("command line in memory: got %q", gotCmd)
	}
	checkMPTable(t, mem, 2)
	checkPageTables(t, mem)
}

func checkMPTable(t *testing.T, mem *memory.Memory, vcpus int) {
	t.Helper()
	mpf, _ := mem.Slice(MPTableAddr, 16)
	if string(mpf[:4]) != "_MP_" || sum(mpf) != 0 {
		t.Fatalf("MP floating pointer: signature %q checksum sum %d, want _MP_ and 0", mpf[:4], sum(mpf))
	}
	tableAddr := uint64(binary.LittleEndian.Uint32(mpf[4:]))
	hdr, _ := mem.Slice(tableAddr, 44)
	n := uint64(binary.LittleEndian.Uint16(hdr[4:]))
	table, _ := mem.Slice(tableAddr, n)
	if string(table[:4]) != "PCMP" || sum(table) != 0 {
		t.Fatalf("MP table: signature %q checksum sum %d, want PCMP and 0", table[:4], sum(table))
	}
	counts := map[byte]int{}
	for off := 44; off < len(table); {
		typ := table[off]
		counts[typ]++
		if typ == abi.MPProcessor {
			off += 20
		} else {
			off += 8
		}
	}
	want := map[byte]int{abi.MPProcessor: vcpus, abi.MPBus: 1, abi.MPIOAPIC: 1, abi.MPIntSrc: IOAPICPins, abi.MPLIntSrc: 2}
	for typ, w := range want {
		if counts[typ] != w {
			t.Errorf("MP table entries of type %d: got %d, want %d", typ, counts[typ], w)
		}
	}
}

func sum(b []byte) uint8 {
	var s uint8
	for _, c := range b {
		s += c
	}
	return s
}

func checkPageTables(t *testing.T, mem *memory.Memory) {
	t.Helper()
	// Walk the tables for a few addresses, as the MMU would.
	for _, va := range []uint64{0, 0x1000000, 3<<30 + 0x200000, 4<<30 - 1} {
		pml4e, _ := mem.Uint64(PML4Addr + 8*(va>>39&511))
		pdpte, _ := mem.Uint64(pml4e&^0xfff + 8*(va>>30&511))
		pde, _ := mem.Uint64(pdpte&^0xfff + 8*(va>>21&511))
		if pde&0x81 != 0x81 || pde&^0xfff+va&(1<<21-1) != va {
			t.Errorf("page walk for %#x: PDE %#x does not identity-map it with a 2 MiB page", va, pde)
		}
	}
}

func TestLoadPVH(t *testing.T) {
	kernel := writeFile(t, "vmlinux", makeELF(0x1000000, 62,
		seg{ptLoad, 0x1000000, 0x1000, []byte{0xf4}},
		seg{ptNote, 0, 0, xenNote(0x1000010)}))
	mem := newMem(t, 32<<20)
	e, err := Load(mem, Config{Kernel: kernel, Cmdline: "x", VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if !e.PVH || e.RIP != 0x1000010 || e.BootInfo != PVHInfoAddr {
		t.Fatalf("entry: got %+v, want PVH at 0x1000010 with start info at %#x", e, PVHInfoAddr)
	}
	b, _ := mem.Slice(PVHInfoAddr, 56)
	var info abi.HVMStartInfo
	binary.Read(bytes.NewReader(b), binary.LittleEndian, &info)
	if info.Magic != abi.HVMStartMagic || info.CmdlinePaddr != CmdlineAddr || info.MemmapEntries != 2 || info.NrModules != 0 {
		t.Errorf("hvm_start_info: got %+v", info)
	}
}

func TestLoadRejects(t *testing.T) {
	tests := []struct {
		name string
		elf  []byte
		want string
	}{
		{"not ELF", []byte("MZ this is a bzImage"), "not an ELF"},
		{"wrong machine", makeELF(0x1000000, 183, seg{ptLoad, 0x1000000, 0x1000, []byte{1}}), "EM_X86_64"},
		{"below 1 MiB", makeELF(0x1000000, 62, seg{ptLoad, 0x7000, 0x1000, []byte{1}}), "below 1 MiB"},
		{"past RAM", makeELF(0x1000000, 62, seg{ptLoad, 0x1000000, 1 << 30, []byte{1}}), "does not fit"},
		{"filesz > memsz", makeELF(0x1000000, 62, seg{ptLoad, 0x1000000, 1, []byte{1, 2}}), "exceeds memory size"},
		{"no segments", makeELF(0x1000000, 62), "no loadable segment"},
		{"entry outside", makeELF(0x5000000, 62, seg{ptLoad, 0x1000000, 0x1000, []byte{1}}), "entry point"},
		{"bad note", makeELF(0x1000000, 62, seg{ptLoad, 0x1000000, 0x1000, []byte{1}}, seg{ptNote, 0, 0, xenNote(1)[:14]}), "overruns"},
	}
	mem := newMem(t, 32<<20)
	for _, tt := range tests {
		kernel := writeFile(t, "vmlinux", tt.elf)
		_, err := Load(mem, Config{Kernel: kernel, VCPUs: 1})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
	good := writeFile(t, "vmlinux", makeELF(0x1000000, 62, seg{ptLoad, 0x1000000, 0x1000, []byte{1}}))
	for _, c := range []Config{
		{Kernel: good, VCPUs: 0},
		{Kernel: good, VCPUs: 9},
		{Kernel: good, VCPUs: 1, Cmdline: strings.Repeat("a", CmdlineMax)},
		{Kernel: good, VCPUs: 1, Initrd: writeFile(t, "big", make([]byte, 40<<20))},
	} {
		if _, err := Load(mem, c); err == nil {
			t.Errorf("Load(%+v): got nil error", c)
		}
	}
}

// TestLoadProbe loads the real probe guest built by gcc.
func TestLoadProbe(t *testing.T) {
	path, err := probe.Build(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	mem := newMem(t, 32<<20)
	e, err := Load(mem, Config{Kernel: path, VCPUs: 8})
	if err != nil {
		t.Fatal(err)
	}
	if e.PVH || e.RIP != 0x1000000 {
		t.Errorf("probe entry: got %+v, want 64-bit entry at 0x1000000", e)
	}
	checkMPTable(t, mem, 8)
}

func FuzzFindPVHEntry(f *testing.F) {
	f.Add(xenNote(0x1000000))
	f.Add(append(xenNote(5), xenNote(6)...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, notes []byte) {
		findPVHEntry(notes) // must not panic or loop
	})
}

func FuzzLoadELF(f *testing.F) {
	f.Add(makeELF(0x1000000, 62, seg{ptLoad, 0x1000000, 0x1000, []byte{1}}, seg{ptNote, 0, 0, xenNote(0x1000000)}))
	f.Add(makeELF(0x100000, 62, seg{ptLoad, 0x100000, 0x10, []byte{1}}))
	mem, err := memory.New(32<<20, memory.Backing{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { mem.Close() })
	f.Fuzz(func(t *testing.T, b []byte) {
		loadELF(mem, bytes.NewReader(b)) // must not panic or write outside RAM
	})
}
