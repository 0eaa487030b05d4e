package boot

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	abi "github.com/thawvm/thaw/internal/abi/boot"
	"github.com/thawvm/thaw/internal/vmm/memory"
)

// kernelImage is what loading the ELF found.
type kernelImage struct {
	entry    uint64 // e_entry: physical for vmlinux (ENTRY(phys_startup_64))
	pvhEntry uint64 // from the Xen PHYS32_ENTRY note, 0 when absent
	end      uint64 // first byte after the highest segment
}

// maxNoteSize bounds how much of a PT_NOTE segment is read.
const maxNoteSize = 1 << 20

// loadELF copies the PT_LOAD segments of an x86-64 executable ELF to their
// physical addresses and finds its entry points. Every segment must lie in
// RAM at or above 1 MiB, where nothing else the loader writes lives.
func loadELF(mem *memory.Memory, r io.ReaderAt) (kernelImage, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return kernelImage{}, fmt.Errorf("not an ELF vmlinux (bzImage is not supported; use the uncompressed vmlinux): %w", err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return kernelImage{}, fmt.Errorf("ELF is %v %v, want ELFCLASS64 EM_X86_64", f.Class, f.Machine)
	}
	if f.Type != elf.ET_EXEC {
		return kernelImage{}, fmt.Errorf("ELF type %v, want ET_EXEC (a statically linked kernel)", f.Type)
	}
	k := kernelImage{entry: f.Entry}
	loaded := 0
	for i, p := range f.Progs {
		switch p.Type {
		case elf.PT_LOAD:
			if p.Memsz == 0 {
				continue
			}
			if p.Filesz > p.Memsz {
				return k, fmt.Errorf("segment %d: file size %d exceeds memory size %d", i, p.Filesz, p.Memsz)
			}
			if p.Paddr < HighMemStart {
				return k, fmt.Errorf("segment %d loads at %#x, below 1 MiB where the boot structures live", i, p.Paddr)
			}
			dst, err := mem.Slice(p.Paddr, p.Memsz)
			if err != nil {
				return k, fmt.Errorf("segment %d [%#x, +%#x) does not fit in guest RAM: %w", i, p.Paddr, p.Memsz, err)
			}
			if _, err := io.ReadFull(io.NewSectionReader(r, int64(p.Off), int64(p.Filesz)), dst[:p.Filesz]); err != nil {
				return k, fmt.Errorf("reading segment %d: %w", i, err)
			}
			clear(dst[p.Filesz:])
			k.end = max(k.end, p.Paddr+p.Memsz)
			loaded++
		case elf.PT_NOTE:
			if k.pvhEntry != 0 {
				continue
			}
			if p.Filesz > maxNoteSize {
				return k, fmt.Errorf("note segment %d is %d bytes, more than %d", i, p.Filesz, maxNoteSize)
			}
			buf := make([]byte, p.Filesz)
			if _, err := io.ReadFull(p.Open(), buf); err != nil {
				return k, fmt.Errorf("reading note segment %d: %w", i, err)
			}
			e, err := findPVHEntry(buf)
			if err != nil {
				return k, fmt.Errorf("note segment %d: %w", i, err)
			}
			k.pvhEntry = e
		}
	}
	if loaded == 0 {
		return k, errors.New("ELF has no loadable segment")
	}
	entry := k.entry
	if k.pvhEntry != 0 {
		entry = k.pvhEntry
	}
	if _, err := mem.Slice(entry, 1); err != nil || entry < HighMemStart || entry >= k.end {
		return k, fmt.Errorf("entry point %#x is not inside the loaded kernel [1 MiB, %#x)", entry, k.end)
	}
	return k, nil
}

// findPVHEntry walks ELF notes (Elf64_Nhdr: namesz, descsz, type, then the
// name and descriptor, each padded to 4 bytes) for the Xen
// XEN_ELFNOTE_PHYS32_ENTRY note and returns its entry address, or 0.
func findPVHEntry(notes []byte) (uint64, error) {
	le := binary.LittleEndian
	for len(notes) >= 12 {
		namesz, descsz, typ := uint64(le.Uint32(notes)), uint64(le.Uint32(notes[4:])), le.Uint32(notes[8:])
		notes = notes[12:]
		nameEnd := (namesz + 3) &^ 3
		descEnd := nameEnd + (descsz+3)&^3
		if descEnd > uint64(len(notes)) {
			return 0, fmt.Errorf("note of type %d overruns its segment", typ)
		}
		name := bytes.TrimRight(notes[:namesz], "\x00")
		desc := notes[nameEnd : nameEnd+descsz]
		notes = notes[descEnd:]
		if string(name) != "Xen" || typ != abi.XenElfnotePhys32Entry {
			continue
		}
		switch len(desc) {
		case 4:
			return uint64(le.Uint32(desc)), nil
		case 8:
			return le.Uint64(desc), nil
		default:
			return 0, fmt.Errorf("PVH entry note has a %d-byte descriptor, want 4 or 8", len(desc))
		}
	}
	return 0, nil
}
