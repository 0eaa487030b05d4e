package boot

import (
	"bytes"
	"encoding/binary"
	"fmt"

	abi "github.com/thawvm/thaw/internal/abi/boot"
	"github.com/thawvm/thaw/internal/vmm/memory"
)

// Interrupt controller addresses and versions the MP table announces; KVM's
// in-kernel IOAPIC and local APICs answer there.
const (
	IOAPICAddr = 0xfec00000
	LAPICAddr  = 0xfee00000
	// IOAPICPins is the number of IOAPIC inputs, and so of GSIs.
	IOAPICPins   = 24
	apicVersion  = 0x14
	ioapicVer    = 0x11
	cpuSignature = 0x600 // family 6
	cpuFeatures  = 0x201 // FPU and APIC
)

// writeMPTable writes an MP floating pointer and configuration table
// (Intel MP Spec 1.4) at MPTableAddr: one processor entry per vCPU, an ISA
// bus, the IOAPIC with every pin routed to the same-numbered GSI, ExtINT on
// LINT0 and NMI on LINT1. Without it the kernel boots a single CPU and no
// IOAPIC.
func writeMPTable(mem *memory.Memory, vcpus int) error {
	le := binary.LittleEndian
	ioapicID := uint8(vcpus + 1)

	var entries bytes.Buffer
	for i := range vcpus {
		flags := uint8(abi.CPUEnabled)
		if i == 0 {
			flags |= abi.CPUBootProcessor
		}
		binary.Write(&entries, le, abi.MPCCPU{Type: abi.MPProcessor, APICID: uint8(i), APICVer: apicVersion,
			CPUFlag: flags, CPUFeature: cpuSignature, FeatureFlag: cpuFeatures})
	}
	binary.Write(&entries, le, abi.MPCBus{Type: abi.MPBus, BusType: [6]byte{'I', 'S', 'A', ' ', ' ', ' '}})
	binary.Write(&entries, le, abi.MPCIOAPIC{Type: abi.MPIOAPIC, APICID: ioapicID, APICVer: ioapicVer,
		Flags: abi.MPIOAPICUsable, APICAddr: IOAPICAddr})
	for pin := range uint8(IOAPICPins) {
		binary.Write(&entries, le, abi.MPCIntSrc{Type: abi.MPIntSrc, IRQType: abi.MPIrqINT,
			IRQFlag: abi.MPIrqDirDefault, SrcBusIRQ: pin, DstAPIC: ioapicID, DstIRQ: pin})
	}
	binary.Write(&entries, le, abi.MPCLIntSrc{Type: abi.MPLIntSrc, IRQType: abi.MPIrqExtINT, DestAPIC: 0, DestAPICInt: 0})
	binary.Write(&entries, le, abi.MPCLIntSrc{Type: abi.MPLIntSrc, IRQType: abi.MPIrqNMI, DestAPIC: 0xff, DestAPICInt: 1})

	const mpfSize, mpcSize = 16, 44
	table := abi.MPCTable{
		Signature: [4]byte([]byte(abi.MPCSignature)),
		Length:    uint16(mpcSize + entries.Len()),
		Spec:      abi.MPSpecRev14,
		OEM:       [8]byte([]byte("THAW    ")),
		ProductID: [12]byte([]byte("THAW-VMM    ")),
		LAPIC:     LAPICAddr,
	}
	var tb bytes.Buffer
	binary.Write(&tb, le, table)
	tb.Write(entries.Bytes())
	tbytes := tb.Bytes()
	tbytes[7] = checksum(tbytes) // mpc_table.checksum makes the table sum to 0

	mpf := abi.MPFIntel{
		Signature:     [4]byte([]byte(abi.MPFSignature)),
		PhysPtr:       MPTableAddr + mpfSize,
		Length:        1,
		Specification: abi.MPSpecRev14,
	}
	var fb bytes.Buffer
	binary.Write(&fb, le, mpf)
	fbytes := fb.Bytes()
	fbytes[10] = checksum(fbytes)

	if end := MPTableAddr + mpfSize + len(tbytes); end > ebdaEnd {
		return fmt.Errorf("MP table for %d vCPUs ends at %#x, past the EBDA's end %#x", vcpus, end, ebdaEnd)
	}
	if err := mem.Write(MPTableAddr, fbytes); err != nil {
		return err
	}
	return mem.Write(MPTableAddr+mpfSize, tbytes)
}

// ebdaEnd is where the EBDA the MP table lives in ends.
const ebdaEnd = 0xa0000

// checksum returns the byte that makes b (with that byte still 0) sum to 0.
func checksum(b []byte) uint8 {
	var s uint8
	for _, c := range b {
		s += c
	}
	return -s
}
