package cpuid

import (
	"slices"
	"strings"
	"testing"

	kabi "github.com/thawvm/thaw/internal/abi/kvm"
)

func mustFind(t *testing.T, es []kabi.CPUIDEntry2, function, index uint32) kabi.CPUIDEntry2 {
	t.Helper()
	e := find(es, function, index)
	if e == nil || (e.Flags&kabi.KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0 && e.Index != index) {
		t.Fatalf("leaf %#x.%d missing", function, index)
	}
	return *e
}

func TestNormalizeTopology(t *testing.T) {
	hosts := []struct {
		name string
		in   []kabi.CPUIDEntry2
		amd  bool
	}{{"pvm-intel", pvmIntel, false}, {"epyc-amd", epycAMD, true}}
	for _, h := range hosts {
		for _, c := range []struct{ id, count int }{{0, 1}, {0, 2}, {1, 2}, {5, 8}, {254, 255}} {
			out, err := Normalize(h.in, Options{ID: c.id, Count: c.count})
			if err != nil {
				t.Fatalf("%s %+v: %v", h.name, c, err)
			}
			id, count := uint32(c.id), uint32(c.count)
			l1 := mustFind(t, out, 1, 0)
			if got, want := l1.EBX>>24, id; got != want {
				t.Errorf("%s %+v: leaf 1 APIC ID %d, want %d", h.name, c, got, want)
			}
			if got, want := l1.EBX>>16&0xff, count; got != want {
				t.Errorf("%s %+v: leaf 1 logical count %d, want %d", h.name, c, got, want)
			}
			if got, want := l1.EBX>>8&0xff, uint32(8); got != want {
				t.Errorf("%s %+v: leaf 1 CLFLUSH size %d, want %d (64 bytes)", h.name, c, got, want)
			}
			if got, want := l1.EDX&edxHTT != 0, count > 1; got != want {
				t.Errorf("%s %+v: HTT %v, want %v", h.name, c, got, want)
			}
			if l1.ECX&ecxHypervisor == 0 || l1.ECX&ecxTSCDeadline == 0 {
				t.Errorf("%s %+v: leaf 1 ECX %#x lacks hypervisor or TSC-deadline", h.name, c, l1.ECX)
			}
			if l1.ECX&(ecxOSXSAVE|ecxPDCM) != 0 {
				t.Errorf("%s %+v: leaf 1 ECX %#x has OSXSAVE or PDCM", h.name, c, l1.ECX)
			}
			for sub := uint32(0); sub < 2; sub++ {
				for _, leaf := range []uint32{leafTopology, leafTopology2} {
					if find(h.in, leaf, 0) == nil {
						continue // not offered, so not added
					}
					e := mustFind(t, out, leaf, sub)
					if e.EDX != id {
						t.Errorf("%s %+v: leaf %#x.%d x2APIC ID %d, want %d", h.name, c, leaf, sub, e.EDX, id)
					}
					wantEBX := map[uint32]uint32{0: 1, 1: count}[sub]
					if e.EBX != wantEBX || e.ECX>>8&0xff != sub+1 {
						t.Errorf("%s %+v: leaf %#x.%d EBX %d ECX %#x, want EBX %d, level type %d", h.name, c, leaf, sub, e.EBX, e.ECX, wantEBX, sub+1)
					}
					if sub == 1 && 1<<e.EAX < count {
						t.Errorf("%s %+v: leaf %#x.1 shift %d does not cover %d cores", h.name, c, leaf, e.EAX, count)
					}
				}
			}
			for _, leaf := range []uint32{leafTopology, leafTopology2} {
				if find(h.in, leaf, 0) == nil {
					continue
				}
				if e := mustFind(t, out, leaf, 2); e.EBX != 0 || e.ECX>>8&0xff != 0 || e.EDX != id {
					t.Errorf("%s %+v: leaf %#x.2 %+v, want the invalid level ending the list", h.name, c, leaf, e)
				}
			}
			if a := mustFind(t, out, leafPMU, 0); a != (kabi.CPUIDEntry2{Function: leafPMU}) {
				t.Errorf("%s %+v: leaf 0xA %+v, want all zero (no PMU)", h.name, c, a)
			}
			if p := mustFind(t, out, leafPower, 0); p.EAX&^(1<<2) != 0 || p.ECX != 0 {
				t.Errorf("%s %+v: leaf 6 EAX %#x ECX %#x, want ARAT at most", h.name, c, p.EAX, p.ECX)
			}
			if f := mustFind(t, out, leafKVMFeat, 0); f.EAX&kvmFeatClocksource2 == 0 {
				t.Errorf("%s %+v: leaf 0x40000001 EAX %#x lacks kvm-clock", h.name, c, f.EAX)
			}
			if s := mustFind(t, out, leafKVMSig, 0); s.EBX != 0x4b4d564b {
				t.Errorf("%s %+v: KVM signature EBX %#x changed", h.name, c, s.EBX)
			}
			if h.amd {
				if e := mustFind(t, out, leafAMDTopo, 0); e.EAX != id || e.EBX&0xff != id&0xff || e.EBX>>8&0xff != 0 {
					t.Errorf("%s %+v: leaf 0x8000001e %+v, want APIC ID %d, core %d, one thread per core", h.name, c, e, id, id)
				}
				if e := mustFind(t, out, leafExtAddr, 0); e.ECX&0xff != count-1 || 1<<(e.ECX>>12&0xf) < count {
					t.Errorf("%s %+v: leaf 0x80000008 ECX %#x, want %d cores", h.name, c, e.ECX, count)
				}
			}
			if !h.amd {
				for sub := uint32(0); sub < 4; sub++ {
					e := mustFind(t, out, leafCache, sub)
					if got, want := e.EAX>>26, min(count-1, 63); got != want {
						t.Errorf("%s %+v: leaf 4.%d cores-1 %d, want %d", h.name, c, sub, got, want)
					}
				}
			}
		}
	}
}

// xsaveSize is the standard-format area for components xcr0, from the
// component subleaves of es.
func xsaveSize(t *testing.T, es []kabi.CPUIDEntry2, xcr0 uint64) uint32 {
	t.Helper()
	size := uint32(legacyXSAVESize)
	for c := uint32(2); c < 64; c++ {
		if xcr0&(1<<c) == 0 {
			continue
		}
		e := mustFind(t, es, leafXSAVE, c)
		size = max(size, e.EBX+e.EAX)
	}
	return size
}

func TestNormalizeXSAVE(t *testing.T) {
	// broken offers AVX-512 (5-7) and PKRU (9) but lays out only AVX (2).
	broken := slices.DeleteFunc(slices.Clone(pvmIntel), func(e kabi.CPUIDEntry2) bool {
		return e.Function == leafXSAVE && e.Index >= 5
	})
	tests := []struct {
		name     string
		in       []kabi.CPUIDEntry2
		wantXCR0 uint64
		wantMax  uint32
	}{
		{"pvm-intel", pvmIntel, 0x2e7, 0xa88},
		{"epyc-amd", epycAMD, 0x7, 0x340},
		{"components without layout", broken, 0x7, 0x340},
	}
	for _, tt := range tests {
		out, err := Normalize(tt.in, Options{ID: 0, Count: 2})
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		s0 := mustFind(t, out, leafXSAVE, 0)
		xcr0 := uint64(s0.EDX)<<32 | uint64(s0.EAX)
		if xcr0 != tt.wantXCR0 {
			t.Errorf("%s: offered XCR0 %#x, want %#x", tt.name, xcr0, tt.wantXCR0)
		}
		if s0.ECX != tt.wantMax {
			t.Errorf("%s: max size (ECX) %#x, want %#x", tt.name, s0.ECX, tt.wantMax)
		}
		if got := xsaveSize(t, out, xcr0); s0.ECX != got {
			t.Errorf("%s: ECX %#x disagrees with the component subleaves' %#x", tt.name, s0.ECX, got)
		}
		if s0.EBX != legacyXSAVESize {
			t.Errorf("%s: EBX %#x, want %#x (reset XCR0: x87 only)", tt.name, s0.EBX, legacyXSAVESize)
		}
		for _, e := range out {
			if e.Function == leafXSAVE && e.Index >= 2 && xcr0&(1<<e.Index) == 0 {
				t.Errorf("%s: subleaf %d kept for a component not offered", tt.name, e.Index)
			}
		}
	}
}

func TestNormalizeNoXSAVE(t *testing.T) {
	for name, in := range map[string][]kabi.CPUIDEntry2{"pvm-intel": pvmIntel, "epyc-amd": epycAMD} {
		out, err := Normalize(in, Options{ID: 1, Count: 2, NoXSAVE: true})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, e := range out {
			if e.Function == leafXSAVE {
				t.Errorf("%s: leaf 0xD.%d kept with NoXSAVE", name, e.Index)
			}
		}
		if l1 := mustFind(t, out, 1, 0); l1.ECX&(ecxXSAVE|ecxAVX|ecxFMA|ecxF16C) != 0 {
			t.Errorf("%s: leaf 1 ECX %#x still offers XSAVE or AVX", name, l1.ECX)
		}
		if l7 := mustFind(t, out, leafExtFeat, 0); l7.EBX&avx7EBX != 0 || l7.ECX&avx7ECX != 0 || l7.EDX&avx7EDX != 0 {
			t.Errorf("%s: leaf 7 %+v still offers AVX2/AVX-512/AMX", name, l7)
		}
	}
	// epycAMD does offer XSAVE and AVX2: the test above is not vacuous.
	// (kvm_pvm already hides both.)
	if l1, l7 := mustFind(t, epycAMD, 1, 0), mustFind(t, epycAMD, leafExtFeat, 0); l1.ECX&ecxXSAVE == 0 || l7.EBX&avx7EBX == 0 {
		t.Fatal("epycAMD offers no XSAVE or AVX2: the table is not what the test assumes")
	}
}

func TestNormalizeLeavesInputAlone(t *testing.T) {
	in := slices.Clone(pvmIntel)
	if _, err := Normalize(in, Options{ID: 1, Count: 2, NoXSAVE: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := Normalize(in, Options{ID: 1, Count: 2}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(in, pvmIntel) {
		t.Error("Normalize modified its input")
	}
}

func TestNormalizeErrors(t *testing.T) {
	without := func(function uint32) []kabi.CPUIDEntry2 {
		return slices.DeleteFunc(slices.Clone(pvmIntel), func(e kabi.CPUIDEntry2) bool { return e.Function == function })
	}
	patch := func(function, index uint32, f func(*kabi.CPUIDEntry2)) []kabi.CPUIDEntry2 {
		es := slices.Clone(pvmIntel)
		for i := range es {
			if es[i].Function == function && es[i].Index == index {
				f(&es[i])
			}
		}
		return es
	}
	tests := []struct {
		name string
		in   []kabi.CPUIDEntry2
		o    Options
		want string
	}{
		{"no vCPUs", pvmIntel, Options{ID: 0, Count: 0}, "0 vCPUs, want 1 to 255"},
		{"too many vCPUs", pvmIntel, Options{ID: 0, Count: 256}, "256 vCPUs, want 1 to 255"},
		{"id out of range", pvmIntel, Options{ID: 2, Count: 2}, "vCPU id 2 out of range for 2 vCPUs"},
		{"negative id", pvmIntel, Options{ID: -1, Count: 2}, "vCPU id -1 out of range"},
		{"no leaf 1", without(1), Options{Count: 1}, "no leaf 1"},
		{"no KVM signature", without(leafKVMSig), Options{Count: 1}, "no paravirt signature leaf 0x40000000"},
		{"no SSE in XSAVE", patch(leafXSAVE, 0, func(e *kabi.CPUIDEntry2) { e.EAX = 0x5 }), Options{Count: 1}, "without x87 and SSE"},
		{"component in legacy area", patch(leafXSAVE, 2, func(e *kabi.CPUIDEntry2) { e.EBX = 0x100 }), Options{Count: 1}, "component 2 at offset 256 overlaps"},
	}
	for _, tt := range tests {
		_, err := Normalize(tt.in, tt.o)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got error %v, want one containing %q", tt.name, err, tt.want)
		}
	}
}
