package cpuid

import (
	"fmt"
	"math/bits"

	kabi "github.com/thawvm/thaw/internal/abi/kvm"
)

// legacyXSAVESize is the XSAVE area for x87 and SSE alone: the 512-byte
// legacy region plus the 64-byte header.
const legacyXSAVESize = 512 + 64

// xsaveLeaves makes leaf 0xD self-consistent and returns the table
// without the subleaves of components it does not offer.
//
// Subleaf 0: EDX:EAX is the user components XCR0 may enable; EBX is the
// area size for the components enabled now (KVM recomputes it from the
// guest's XCR0 at KVM_SET_CPUID2 and at every XSETBV it sees); ECX is the
// size for all of EDX:EAX, which a guest compares against the sum of the
// component subleaves (Linux's "XSAVE consistency problem" check). A
// component in EDX:EAX without its subleaf (size and offset) cannot be
// laid out, so it is dropped, and ECX is recomputed from what is left.
// With noXSAVE the leaf is removed entirely.
func xsaveLeaves(es []kabi.CPUIDEntry2, noXSAVE bool) ([]kabi.CPUIDEntry2, error) {
	if noXSAVE {
		out := es[:0]
		for _, e := range es {
			if e.Function != leafXSAVE {
				out = append(out, e)
			}
		}
		return out, nil
	}
	s0 := find(es, leafXSAVE, 0)
	if s0 == nil {
		return es, nil
	}
	offered := uint64(s0.EDX)<<32 | uint64(s0.EAX)
	if offered&xfeatLegacy != xfeatLegacy {
		return nil, fmt.Errorf("normalising CPUID: leaf 0xD offers XCR0 components %#x without x87 and SSE: KVM's XSAVE leaf is unusable", offered)
	}
	keep := uint64(xfeatLegacy)
	size := uint32(legacyXSAVESize)
	for rest := offered &^ xfeatLegacy; rest != 0; rest &= rest - 1 {
		c := uint32(bits.TrailingZeros64(rest))
		sub := find(es, leafXSAVE, c)
		if sub == nil || sub.Index != c || sub.EAX == 0 {
			continue // no layout: drop the component
		}
		// Subleaf c: EAX size, EBX offset in the standard format.
		if sub.EBX < legacyXSAVESize {
			return nil, fmt.Errorf("normalising CPUID: XSAVE component %d at offset %d overlaps the legacy area (< %d)", c, sub.EBX, legacyXSAVESize)
		}
		keep |= 1 << c
		size = max(size, sub.EBX+sub.EAX)
	}
	s0.EAX, s0.EDX = uint32(keep), uint32(keep>>32)
	s0.ECX = size
	// EBX for the reset XCR0 (x87 only); KVM keeps it current afterwards.
	s0.EBX = legacyXSAVESize

	keep |= supervisorComponents(es)
	out := es[:0]
	for _, e := range es {
		// Subleaves 0 and 1 are headers; 2..63 describe components.
		if e.Function == leafXSAVE && e.Index >= 2 && e.Index < 64 && keep&(1<<e.Index) == 0 {
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

// supervisorComponents returns the components offered in IA32_XSS
// (subleaf 1 EDX:ECX); their subleaves stay for the kernel's XSAVES
// layout.
func supervisorComponents(es []kabi.CPUIDEntry2) uint64 {
	s1 := find(es, leafXSAVE, 1)
	if s1 == nil || s1.Index != 1 {
		return 0
	}
	return uint64(s1.EDX)<<32 | uint64(s1.ECX)
}
