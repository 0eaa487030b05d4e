package boot

import (
	"bytes"
	"encoding/binary"
	"fmt"

	abi "github.com/thawvm/thaw/internal/abi/boot"
	"github.com/thawvm/thaw/internal/vmm/memory"
)

// writeZeroPage fills struct boot_params for the 64-bit boot protocol
// (Documentation/arch/x86/boot.rst, "64-bit BOOT PROTOCOL"): a vmlinux has
// no setup header of its own, so the loader writes the fields the kernel
// reads.
func writeZeroPage(mem *memory.Memory, cmdline string, initrd region) error {
	zp, err := mem.Slice(ZeroPageAddr, abi.ZeroPageSize)
	if err != nil {
		return err
	}
	clear(zp)
	le := binary.LittleEndian
	le.PutUint16(zp[abi.BootFlag:], abi.BootFlagMagic)
	le.PutUint32(zp[abi.Header:], abi.HeaderMagic)
	le.PutUint16(zp[abi.Version:], 0x020f)
	zp[abi.TypeOfLoader] = abi.LoaderTypeUnknown
	zp[abi.LoadFlags] = abi.LoadedHigh
	le.PutUint32(zp[abi.CmdLinePtr:], CmdlineAddr)
	le.PutUint32(zp[abi.CmdlineSize:], uint32(len(cmdline)))
	le.PutUint32(zp[abi.KernelAlignment:], 0x1000000)
	if initrd.size != 0 {
		le.PutUint32(zp[abi.RamdiskImage:], uint32(initrd.addr))
		le.PutUint32(zp[abi.RamdiskSize:], uint32(initrd.size))
		le.PutUint32(zp[abi.ExtRamdiskImage:], uint32(initrd.addr>>32))
		le.PutUint32(zp[abi.ExtRamdiskSize:], uint32(initrd.size>>32))
	}
	entries := e820(mem)
	if len(entries) > abi.E820MaxEntriesZeropage {
		return fmt.Errorf("%d e820 entries, more than the zero page holds", len(entries))
	}
	var buf bytes.Buffer
	for _, e := range entries {
		binary.Write(&buf, le, abi.E820Entry{Addr: e.addr, Size: e.size, Type: abi.E820TypeRAM})
	}
	zp[abi.E820Entries] = uint8(len(entries))
	copy(zp[abi.E820Table:], buf.Bytes())
	return nil
}

// writePVHInfo fills hvm_start_info, its memory map and (with an initrd)
// its module list, for a kernel entered through its PVH note.
func writePVHInfo(mem *memory.Memory, cmdline string, initrd region) error {
	le := binary.LittleEndian
	entries := e820(mem)
	var memmap bytes.Buffer
	for _, e := range entries {
		binary.Write(&memmap, le, abi.HVMMemmapTableEntry{Addr: e.addr, Size: e.size, Type: abi.E820TypeRAM})
	}
	if PVHMemmapAddr+uint64(memmap.Len()) > ZeroPageAddr {
		return fmt.Errorf("%d memory map entries overflow the PVH area", len(entries))
	}
	if err := mem.Write(PVHMemmapAddr, memmap.Bytes()); err != nil {
		return err
	}
	info := abi.HVMStartInfo{
		Magic:         abi.HVMStartMagic,
		Version:       abi.HVMStartInfoVersion,
		CmdlinePaddr:  CmdlineAddr,
		MemmapPaddr:   PVHMemmapAddr,
		MemmapEntries: uint32(len(entries)),
	}
	if initrd.size != 0 {
		var mod bytes.Buffer
		binary.Write(&mod, le, abi.HVMModlistEntry{Paddr: initrd.addr, Size: initrd.size})
		if err := mem.Write(PVHModlistAddr, mod.Bytes()); err != nil {
			return err
		}
		info.NrModules = 1
		info.ModlistPaddr = PVHModlistAddr
	}
	var b bytes.Buffer
	binary.Write(&b, le, info)
	return mem.Write(PVHInfoAddr, b.Bytes())
}
