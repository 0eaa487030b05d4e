// Package boot loads a kernel into guest memory and describes how its
// vCPUs must start. It reads an ELF vmlinux, boots it through PVH when the
// kernel carries a PVH entry note and through the 64-bit Linux boot
// protocol otherwise, and writes what the guest expects to find: the zero
// page or hvm_start_info with the e820 map, the command line, the initrd,
// identity page tables and a GDT, and an MP table announcing the vCPUs and
// the IOAPIC.
package boot

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/thawvm/thaw/internal/vmm/memory"
)

// Fixed guest-physical addresses of what the loader writes, below 1 MiB
// (Firecracker's choices, so a guest sees the same machine under either VMM).
const (
	GDTAddr        = 0x500
	IDTAddr        = 0x520
	PVHInfoAddr    = 0x6000
	PVHModlistAddr = 0x6040
	PVHMemmapAddr  = 0x6080
	ZeroPageAddr   = 0x7000
	BootStackAddr  = 0x8ff0
	PML4Addr       = 0x9000
	PDPTAddr       = 0xa000
	PDAddr         = 0xb000 // four page directories: 0xb000-0xefff
	CmdlineAddr    = 0x20000
	MPTableAddr    = 0x9fc00 // the EBDA, where the kernel scans for "_MP_"
	EBDAStart      = 0x9fc00
	HighMemStart   = 0x100000

	// CmdlineMax bounds the command line, including its NUL (Linux 6.1's
	// x86 COMMAND_LINE_SIZE).
	CmdlineMax = 2048
	// IdentityMapSize is how much of the guest-physical space the boot page
	// tables identity-map with 2 MiB pages: all of the low 4 GiB, so a
	// freestanding guest can reach the MMIO devices below 4 GiB too. 1 GiB
	// pages would be shorter, but PVM does not offer them.
	IdentityMapSize = 4 << 30
)

// MaxVCPUs is the most vCPUs a machine may have.
const MaxVCPUs = 8

// Config says what to boot.
type Config struct {
	Kernel  string // path to an ELF vmlinux (or a freestanding ELF guest)
	Initrd  string // optional path to an initrd
	Cmdline string
	VCPUs   int
}

// Entry is where and how the boot vCPU starts.
type Entry struct {
	PVH bool // 32-bit protected mode, paging off, RBX = start info
	// RIP is the entry point; BootInfo the guest-physical address of the
	// zero page (RSI) or of hvm_start_info (RBX).
	RIP      uint64
	BootInfo uint64
}

// Load loads c's kernel (and initrd) into mem and writes the boot
// structures. The returned Entry goes to SetupVCPU for the boot vCPU.
func Load(mem *memory.Memory, c Config) (Entry, error) {
	if c.VCPUs < 1 || c.VCPUs > MaxVCPUs {
		return Entry{}, fmt.Errorf("vcpu count %d: want 1 to %d", c.VCPUs, MaxVCPUs)
	}
	if len(c.Cmdline)+1 > CmdlineMax {
		return Entry{}, fmt.Errorf("kernel command line is %d bytes, longer than the %d the kernel accepts", len(c.Cmdline), CmdlineMax-1)
	}
	if mem.Size() < 16<<20 {
		return Entry{}, fmt.Errorf("guest memory of %d bytes is too small to boot from: want at least 16 MiB", mem.Size())
	}
	kf, err := os.Open(c.Kernel)
	if err != nil {
		return Entry{}, fmt.Errorf("opening kernel: %w", err)
	}
	defer kf.Close()
	k, err := loadELF(mem, kf)
	if err != nil {
		return Entry{}, fmt.Errorf("loading kernel %s: %w", c.Kernel, err)
	}
	var initrd region
	if c.Initrd != "" {
		initrd, err = loadInitrd(mem, c.Initrd, k.end)
		if err != nil {
			return Entry{}, fmt.Errorf("loading initrd %s: %w", c.Initrd, err)
		}
	}
	if err := writeCmdline(mem, c.Cmdline); err != nil {
		return Entry{}, err
	}
	if err := writeMPTable(mem, c.VCPUs); err != nil {
		return Entry{}, fmt.Errorf("writing MP table: %w", err)
	}
	if err := writePageTables(mem); err != nil {
		return Entry{}, err
	}
	if err := writeGDT(mem); err != nil {
		return Entry{}, err
	}
	if k.pvhEntry != 0 {
		if err := writePVHInfo(mem, c.Cmdline, initrd); err != nil {
			return Entry{}, fmt.Errorf("writing PVH start info: %w", err)
		}
		return Entry{PVH: true, RIP: k.pvhEntry, BootInfo: PVHInfoAddr}, nil
	}
	if err := writeZeroPage(mem, c.Cmdline, initrd); err != nil {
		return Entry{}, fmt.Errorf("writing zero page: %w", err)
	}
	return Entry{RIP: k.entry, BootInfo: ZeroPageAddr}, nil
}

// region is a guest-physical range.
type region struct{ addr, size uint64 }

func writeCmdline(mem *memory.Memory, cmdline string) error {
	b := append([]byte(cmdline), 0)
	if err := mem.Write(CmdlineAddr, b); err != nil {
		return fmt.Errorf("writing kernel command line: %w", err)
	}
	return nil
}

// loadInitrd places the initrd at the top of RAM below the MMIO gap, page
// aligned, above the kernel.
func loadInitrd(mem *memory.Memory, path string, kernelEnd uint64) (region, error) {
	f, err := os.Open(path)
	if err != nil {
		return region{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return region{}, err
	}
	size := uint64(fi.Size())
	lowTop := min(mem.Size(), memory.MMIOGapStart)
	if size == 0 {
		return region{}, errors.New("initrd is empty")
	}
	if size > lowTop || (lowTop-size)&^(memory.PageSize-1) < kernelEnd {
		return region{}, fmt.Errorf("initrd of %d bytes does not fit between the kernel (ends at %#x) and the top of low memory (%#x): give the guest more memory", size, kernelEnd, lowTop)
	}
	addr := (lowTop - size) &^ (memory.PageSize - 1)
	dst, err := mem.Slice(addr, size)
	if err != nil {
		return region{}, err
	}
	if _, err := io.ReadFull(f, dst); err != nil {
		return region{}, fmt.Errorf("reading: %w", err)
	}
	return region{addr, size}, nil
}

// e820 returns the guest's memory map: low RAM up to the EBDA, then RAM
// from 1 MiB to the end of each region. The EBDA-to-1 MiB hole holds the MP
// table and the legacy ROM area.
func e820(mem *memory.Memory) []region {
	var out []region
	for _, r := range mem.Regions() {
		if r.GPA == 0 {
			out = append(out, region{0, EBDAStart})
			if r.Size > HighMemStart {
				out = append(out, region{HighMemStart, r.Size - HighMemStart})
			}
			continue
		}
		out = append(out, region{r.GPA, r.Size})
	}
	return out
}
