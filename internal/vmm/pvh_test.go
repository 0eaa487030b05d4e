package vmm

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/testenv"
)

// pvhELF returns an x86-64 ELF whose only entry is a PVH note pointing at
// code32: what a Linux vmlinux built with CONFIG_PVH looks like to the
// loader, minus Linux.
func pvhELF(code32 []byte) []byte {
	le := binary.LittleEndian
	const (
		ehSize, phSize = 64, 56
		load           = 0x1000000
	)
	note := make([]byte, 20)
	le.PutUint32(note[0:], 4)  // namesz
	le.PutUint32(note[4:], 4)  // descsz
	le.PutUint32(note[8:], 18) // XEN_ELFNOTE_PHYS32_ENTRY
	copy(note[12:], "Xen\x00")
	le.PutUint32(note[16:], load)

	h := make([]byte, ehSize+2*phSize)
	copy(h, []byte{0x7f, 'E', 'L', 'F', 2, 1, 1})
	le.PutUint16(h[16:], 2)  // ET_EXEC
	le.PutUint16(h[18:], 62) // EM_X86_64
	le.PutUint32(h[20:], 1)
	le.PutUint64(h[24:], 0xffffffff81000000) // a 64-bit entry the loader must ignore
	le.PutUint64(h[32:], ehSize)
	le.PutUint16(h[52:], ehSize)
	le.PutUint16(h[54:], phSize)
	le.PutUint16(h[56:], 2)
	off := uint64(len(h))
	ph := func(i int, typ uint32, paddr uint64, data []byte) {
		p := h[ehSize+i*phSize:]
		le.PutUint32(p[0:], typ)
		le.PutUint32(p[4:], 5)
		le.PutUint64(p[8:], off)
		le.PutUint64(p[16:], paddr)
		le.PutUint64(p[24:], paddr)
		le.PutUint64(p[32:], uint64(len(data)))
		le.PutUint64(p[40:], uint64(len(data)))
		off += uint64(len(data))
	}
	ph(0, 1, load, code32) // PT_LOAD
	ph(1, 4, 0, note)      // PT_NOTE
	return append(append(h, code32...), note...)
}

// TestPVHBoot boots a kernel through its PVH note: the vCPU must start in
// 32-bit protected mode at the note's entry with EBX pointing at
// hvm_start_info, whose magic the guest checks before printing "PVH ok".
func TestPVHBoot(t *testing.T) {
	testenv.RequireKVM(t)
	code := []byte{
		0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
		0x8b, 0x03, // mov eax, [ebx]
		0x3d, 0x78, 0xc5, 0x6e, 0x33, // cmp eax, 0x336ec578
		0x75, 0x0a, // jne fail
		0xb0, 'P', 0xee, // mov al, 'P'; out dx, al
		0xb0, 'V', 0xee,
		0xb0, 'H', 0xee,
		0xeb, 0x03, // jmp done
		0xb0, '!', 0xee, // fail: mov al, '!'; out dx, al
		0xb0, 0xfe, 0xe6, 0x64, // done: mov al, 0xfe; out 0x64, al
		0xf4, // hlt
	}
	path := filepath.Join(t.TempDir(), "vmlinux-pvh")
	if err := os.WriteFile(path, pvhELF(code), 0o644); err != nil {
		t.Fatal(err)
	}
	out := &testenv.Buffer{}
	m := New(Config{Kernel: path, MemMiB: 32, Serial: out}, testLogger(t))
	defer m.Close()
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	e := wait(t, m, 30*time.Second)
	m.hw.serial.Flush()
	if e.Err != nil || out.String() != "PVH" {
		t.Fatalf("PVH boot: exit %v, serial %q, want a reset after %q", e, out.String(), "PVH")
	}
}
