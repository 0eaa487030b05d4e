// Package cpuid normalises the CPUID table KVM offers (KVM_GET_SUPPORTED_CPUID)
// into the one each vCPU is given (KVM_SET_CPUID2): topology that matches
// the machine's vCPU count, this vCPU's APIC ID everywhere it appears, the
// hypervisor bit and TSC-deadline timer, no PMU, no host power management,
// KVM's paravirt leaves with kvm-clock, and an XSAVE leaf (0xD) whose size
// fields agree with the components it offers.
//
// KVM_GET_SUPPORTED_CPUID is a capability list, not a CPU: its leaf 1 EBX
// and topology leaves describe nothing in particular, and its leaf 0xD can
// offer components whose subleaves are missing. Firecracker
// (cpu_config/x86_64/cpuid/normalize.rs) and cloud-hypervisor
// (arch/src/x86_64/mod.rs) normalise the same leaves.
package cpuid

import (
	"errors"
	"fmt"
	"math/bits"
	"slices"

	kabi "github.com/thawvm/thaw/internal/abi/kvm"
)

// Leaves and bits used here (Intel SDM vol. 2A "CPUID", AMD APM vol. 3
// appendix E, Linux Documentation/virt/kvm/x86/cpuid.rst).
const (
	leafVendor    = 0x0
	leafFeatures  = 0x1
	leafCache     = 0x4
	leafPower     = 0x6
	leafExtFeat   = 0x7
	leafPMU       = 0xa
	leafTopology  = 0xb
	leafXSAVE     = 0xd
	leafTopology2 = 0x1f
	leafKVMSig    = 0x40000000
	leafKVMFeat   = 0x40000001
	leafExtMax    = 0x80000000
	leafExtAddr   = 0x80000008
	leafAMDTopo   = 0x8000001e

	// Leaf 1 ECX.
	ecxXSAVE       = 1 << 26
	ecxOSXSAVE     = 1 << 27
	ecxAVX         = 1 << 28
	ecxFMA         = 1 << 12
	ecxF16C        = 1 << 29
	ecxTSCDeadline = 1 << 24
	ecxHypervisor  = 1 << 31
	ecxPDCM        = 1 << 15 // perf capabilities MSR: PMU, which is off
	// Leaf 1 EDX.
	edxHTT = 1 << 28

	// clflushLines is leaf 1 EBX[15:8]: CLFLUSH line size in 8-byte units.
	clflushLines = 8

	// kvmFeatClocksource2 is KVM_FEATURE_CLOCKSOURCE2 in leaf 0x40000001
	// EAX: kvm-clock at MSRs 0x4b564d00/01, which the guest must keep.
	kvmFeatClocksource2 = 1 << 3

	// XSAVE components (XCR0 bits) every XSAVE CPU has.
	xfeatLegacy = 1<<0 | 1<<1 // x87, SSE
)

// Options describe the vCPU a table is for.
type Options struct {
	// ID is the vCPU's index, which is also its APIC ID.
	ID int
	// Count is the machine's number of vCPUs, each one core of a single
	// socket without SMT.
	Count int
	// NoXSAVE hides XSAVE (and AVX, which needs it) so the guest uses
	// FXSAVE. For hosts whose KVM cannot follow the guest's XCR0: KVM
	// rewrites leaf 0xD's EBX from the XCR0 it saw the guest set, and
	// under QEMU TCG's emulated SVM the guest's XSETBV never reaches KVM,
	// so the guest sees sizes for components it did not enable.
	NoXSAVE bool
}

// MaxVCPUs bounds Count: the APIC ID must fit leaf 1 EBX[31:24] and the
// logical processor count EBX[23:16].
const MaxVCPUs = 255

// Normalize returns the CPUID table for one vCPU, derived from KVM's
// supported table; supported is not modified.
func Normalize(supported []kabi.CPUIDEntry2, o Options) ([]kabi.CPUIDEntry2, error) {
	if o.Count < 1 || o.Count > MaxVCPUs {
		return nil, fmt.Errorf("normalising CPUID: %d vCPUs, want 1 to %d", o.Count, MaxVCPUs)
	}
	if o.ID < 0 || o.ID >= o.Count {
		return nil, fmt.Errorf("normalising CPUID: vCPU id %d out of range for %d vCPUs", o.ID, o.Count)
	}
	if find(supported, leafFeatures, 0) == nil {
		return nil, errors.New("normalising CPUID: KVM offers no leaf 1 (features): is this an x86 KVM?")
	}
	out := slices.Clone(supported)
	id := uint32(o.ID)
	count := uint32(o.Count)
	// coreBits is the x2APIC ID shift that covers every core.
	coreBits := uint32(bits.Len32(count - 1))

	xsave, err := xsaveLeaves(out, o.NoXSAVE)
	if err != nil {
		return nil, err
	}
	out = topologyLeaves(xsave)
	for i := range out {
		e := &out[i]
		switch e.Function {
		case leafFeatures:
			e.EBX = id<<24 | count<<16 | clflushLines<<8 | e.EBX&0xff
			e.ECX |= ecxHypervisor | ecxTSCDeadline
			e.ECX &^= ecxPDCM
			if o.NoXSAVE {
				e.ECX &^= ecxXSAVE | ecxOSXSAVE | ecxAVX | ecxFMA | ecxF16C
			}
			// OSXSAVE mirrors the guest's CR4; KVM sets it at run time.
			e.ECX &^= ecxOSXSAVE
			if count > 1 {
				e.EDX |= edxHTT
			} else {
				e.EDX &^= edxHTT
			}
		case leafCache:
			// EAX[31:26]: cores per package - 1; EAX[25:14]: logical
			// processors sharing this cache - 1 (L1/L2 private, L3 shared).
			if e.EAX&0x1f == 0 { // no more caches
				continue
			}
			// The fields are 12 and 6 bits wide.
			sharing := uint32(0)
			if level := e.EAX >> 5 & 7; level >= 3 {
				sharing = min(count-1, 0xfff)
			}
			e.EAX = e.EAX&0x3fff | sharing<<14 | min(count-1, 0x3f)<<26
		case leafPower:
			// No turbo, no hardware P-states or energy bias: the host
			// owns power management. Keep ARAT (EAX bit 2): the LAPIC
			// timer is KVM's and never stops.
			e.EAX &= 1 << 2
			e.EBX, e.ECX, e.EDX = 0, 0, 0
		case leafExtFeat:
			if o.NoXSAVE && e.Index == 0 {
				e.EBX &^= avx7EBX
				e.ECX &^= avx7ECX
				e.EDX &^= avx7EDX
			}
			if o.NoXSAVE && e.Index == 1 {
				e.EAX &^= avx71EAX
			}
		case leafPMU:
			e.EAX, e.EBX, e.ECX, e.EDX = 0, 0, 0, 0
		case leafTopology, leafTopology2:
			topology(e, id, count, coreBits)
		case leafKVMFeat:
			e.EAX |= kvmFeatClocksource2
		case leafAMDTopo:
			// EAX: extended APIC ID; EBX[15:8]: threads per core - 1 (0);
			// EBX[7:0]: core ID; ECX: one node.
			e.EAX = id
			e.EBX = id & 0xff
			e.ECX = 0
			e.EDX = 0
		case leafExtAddr:
			// ECX[7:0]: cores - 1; ECX[15:12]: APIC ID bits.
			if isAMD(out) {
				e.ECX = coreBits<<12 | (count - 1)
			} else {
				e.ECX = 0
			}
		}
	}
	if find(out, leafKVMSig, 0) == nil {
		return nil, errors.New("normalising CPUID: KVM offers no paravirt signature leaf 0x40000000; kvm-clock would be missing")
	}
	return out, nil
}

// AVX family bits of leaf 7, hidden with XSAVE.
const (
	avx7EBX  = 1<<5 | 1<<16 | 1<<17 | 1<<21 | 1<<26 | 1<<27 | 1<<28 | 1<<30 | 1<<31 // AVX2, AVX-512 F DQ IFMA PF ER CD BW VL
	avx7ECX  = 1<<1 | 1<<6 | 1<<8 | 1<<9 | 1<<10 | 1<<11 | 1<<12 | 1<<14            // VBMI, VBMI2, GFNI, VAES, VPCLMULQDQ, VNNI, BITALG, VPOPCNTDQ
	avx7EDX  = 1<<2 | 1<<3 | 1<<8 | 1<<22 | 1<<23 | 1<<24 | 1<<25                   // 4VNNIW, 4FMAPS, VP2INTERSECT, AMX-BF16, FP16, AMX-TILE, AMX-INT8
	avx71EAX = 1<<4 | 1<<5                                                          // AVX-VNNI, AVX512-BF16
)

// topologyLeaves replaces the subleaves of leaves 0xB and 0x1F, where
// offered, with subleaves 0 (SMT), 1 (core) and 2 (the invalid level that
// ends the list): KVM may offer subleaf 0 alone, and a guest reading the
// missing core level would see zeros and count every vCPU as a package.
// topology fills them in.
func topologyLeaves(es []kabi.CPUIDEntry2) []kabi.CPUIDEntry2 {
	var leaves []uint32
	out := es[:0]
	for _, e := range es {
		if e.Function == leafTopology || e.Function == leafTopology2 {
			if !slices.Contains(leaves, e.Function) {
				leaves = append(leaves, e.Function)
			}
			continue
		}
		out = append(out, e)
	}
	for _, f := range leaves {
		for sub := range uint32(3) {
			out = append(out, kabi.CPUIDEntry2{Function: f, Index: sub, Flags: kabi.KVM_CPUID_FLAG_SIGNIFCANT_INDEX})
		}
	}
	return out
}

// topology fills subleaf e.Index of leaf 0xB or 0x1F: level 0 is SMT
// (one thread per core), level 1 is the core level (all vCPUs), and every
// further level is invalid. EDX is the x2APIC ID at every subleaf.
func topology(e *kabi.CPUIDEntry2, id, count, coreBits uint32) {
	const typeSMT, typeCore = 1, 2
	e.EDX = id
	switch e.Index {
	case 0:
		e.EAX, e.EBX, e.ECX = 0, 1, typeSMT<<8
	case 1:
		e.EAX, e.EBX, e.ECX = coreBits, count, typeCore<<8|1
	default:
		e.EAX, e.EBX, e.ECX = 0, 0, e.Index&0xff
	}
}

// isAMD reports whether the vendor string in leaf 0 is AMD's.
func isAMD(es []kabi.CPUIDEntry2) bool {
	e := find(es, leafVendor, 0)
	// "AuthenticAMD" is EBX "Auth", EDX "enti", ECX "cAMD".
	return e != nil && e.EBX == 0x68747541 && e.EDX == 0x69746e65 && e.ECX == 0x444d4163
}

// find returns the entry for function and index (index ignored for
// leaves without a significant index), or nil.
func find(es []kabi.CPUIDEntry2, function, index uint32) *kabi.CPUIDEntry2 {
	for i := range es {
		e := &es[i]
		if e.Function != function {
			continue
		}
		if e.Flags&kabi.KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.Index == index {
			return e
		}
	}
	return nil
}
