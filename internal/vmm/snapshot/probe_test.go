package snapshot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"

	abi "github.com/thawvm/thaw/internal/abi/kvm"
	"github.com/thawvm/thaw/internal/testenv"
	"github.com/thawvm/thaw/internal/vmm/kvm"
	"github.com/thawvm/thaw/internal/vmm/memory"
)

// The probe guest the snapshot tests restore: a freestanding 64-bit loop
// that keeps a counter in memory (at counterGPA) and in RBX, reports it on
// port 0x80 every iteration (so the host can stop it at any iteration),
// and, when the host sets the byte at requestGPA, sums the first and last
// quadword of every page of up to two ranges (base, pages at rangesGPA)
// and reports the 64-bit sum on port 0x81 (low half, then high half).
// Assembled with GNU as from:
//
//	loop: incq 0x500; incq %rbx; movl %ebx,%eax; outl %eax,$0x80
//	      cmpb $0,0x508; je loop
//	      xorq %rax,%rax
//	      movq 0x510,%rsi; movq 0x518,%rcx; call sum
//	      movq 0x520,%rsi; movq 0x528,%rcx; call sum
//	      outl %eax,$0x81; shrq $32,%rax; outl %eax,$0x81
//	      movb $0,0x508; jmp loop
//	sum:  testq %rcx,%rcx; jz 2f
//	   1: addq (%rsi),%rax; addq 0xff8(%rsi),%rax
//	      addq $0x1000,%rsi; decq %rcx; jnz 1b
//	   2: ret
var probeCode = []byte{
	0x48, 0xff, 0x04, 0x25, 0x00, 0x05, 0x00, 0x00,
	0x48, 0xff, 0xc3,
	0x89, 0xd8,
	0xe7, 0x80,
	0x80, 0x3c, 0x25, 0x08, 0x05, 0x00, 0x00, 0x00,
	0x74, 0xe7,
	0x48, 0x31, 0xc0,
	0x48, 0x8b, 0x34, 0x25, 0x10, 0x05, 0x00, 0x00,
	0x48, 0x8b, 0x0c, 0x25, 0x18, 0x05, 0x00, 0x00,
	0xe8, 0x27, 0x00, 0x00, 0x00,
	0x48, 0x8b, 0x34, 0x25, 0x20, 0x05, 0x00, 0x00,
	0x48, 0x8b, 0x0c, 0x25, 0x28, 0x05, 0x00, 0x00,
	0xe8, 0x12, 0x00, 0x00, 0x00,
	0xe7, 0x81,
	0x48, 0xc1, 0xe8, 0x20,
	0xe7, 0x81,
	0xc6, 0x04, 0x25, 0x08, 0x05, 0x00, 0x00, 0x00,
	0xeb, 0xa8,
	0x48, 0x85, 0xc9,
	0x74, 0x16,
	0x48, 0x03, 0x06,
	0x48, 0x03, 0x86, 0xf8, 0x0f, 0x00, 0x00,
	0x48, 0x81, 0xc6, 0x00, 0x10, 0x00, 0x00,
	0x48, 0xff, 0xc9,
	0x75, 0xea,
	0xc3,
}

const (
	counterGPA = 0x500
	requestGPA = 0x508
	rangesGPA  = 0x510 // two (base, pages) pairs
	gdtGPA     = 0x600
	stackTop   = 0x8000
	pml4GPA    = 0x9000
	pdptGPA    = 0xa000
	pdGPA      = 0xb000 // eight PD pages: identity map of 8 GiB
	codeGPA    = 0x100000
	patternGPA = 0x200000
	portCount  = 0x80
	portSum    = 0x81
)

// probeVM is a KVM VM set up as the Machine sets one up (TSS, in-kernel
// irqchip and PIT, one memory slot per region, vCPUs with KVM's supported
// CPUID), around memory the test provides.
type probeVM struct {
	vm   *kvm.VM
	cpus []*kvm.VCPU
	mem  *memory.Memory
}

func openKVM(t testing.TB) *kvm.System {
	t.Helper()
	testenv.RequireKVM(t)
	sys, err := kvm.Open(kvm.DevicePath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sys.Close() })
	return sys
}

func newProbeVM(t testing.TB, sys *kvm.System, mem *memory.Memory, nvcpu int) *probeVM {
	t.Helper()
	pv, err := buildVM(sys, mem, nvcpu)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pv.close)
	return pv
}

func buildVM(sys *kvm.System, mem *memory.Memory, nvcpu int) (*probeVM, error) {
	vm, err := sys.CreateVM()
	if err != nil {
		return nil, err
	}
	pv := &probeVM{vm: vm, mem: mem}
	fail := func(err error) (*probeVM, error) { pv.close(); return nil, err }
	if err := vm.SetTSSAddr(0xfffbd000); err != nil {
		return fail(err)
	}
	if err := vm.CreateIRQChip(); err != nil {
		return fail(err)
	}
	if err := vm.CreatePIT2(abi.KVM_PIT_SPEAKER_DUMMY); err != nil {
		return fail(err)
	}
	for i, r := range mem.Regions() {
		if err := vm.SetUserMemoryRegion(abi.UserspaceMemoryRegion{Slot: uint32(i), GuestPhysAddr: r.GPA, MemorySize: r.Size, UserspaceAddr: r.HostAddr()}); err != nil {
			return fail(err)
		}
	}
	cpuid, err := sys.SupportedCPUID()
	if err != nil {
		return fail(err)
	}
	for i := range nvcpu {
		cpu, err := vm.CreateVCPU(i)
		if err != nil {
			return fail(err)
		}
		pv.cpus = append(pv.cpus, cpu)
		if err := cpu.SetCPUID2(cpuid); err != nil {
			return fail(err)
		}
	}
	return pv, nil
}

func (pv *probeVM) close() {
	for _, c := range pv.cpus {
		c.Close()
	}
	pv.cpus = nil
	if pv.vm != nil {
		pv.vm.Close()
		pv.vm = nil
	}
}

// boot writes the page tables, GDT and code into guest memory and puts
// vCPU 0 in 64-bit mode at the code with counters at zero.
func (pv *probeVM) boot() error {
	le := binary.LittleEndian
	var b [8]byte
	put := func(gpa, v uint64) error { le.PutUint64(b[:], v); return pv.mem.Write(gpa, b[:]) }
	if err := put(pml4GPA, pdptGPA|3); err != nil {
		return err
	}
	for i := range uint64(8) {
		if err := put(pdptGPA+8*i, (pdGPA+i*0x1000)|3); err != nil {
			return err
		}
	}
	for i := range uint64(8 * 512) {
		if err := put(pdGPA+8*i, i<<21|0x83); err != nil { // present, writable, 2 MiB
			return err
		}
	}
	for i, d := range []uint64{0, 0, 0x00af9b000000ffff, 0x00cf93000000ffff} {
		if err := put(gdtGPA+8*uint64(i), d); err != nil {
			return err
		}
	}
	if err := pv.mem.Write(codeGPA, probeCode); err != nil {
		return err
	}
	cpu := pv.cpus[0]
	s, err := cpu.Sregs()
	if err != nil {
		return err
	}
	code := abi.Segment{Limit: 0xffffffff, Selector: 0x10, Type: 0xb, Present: 1, S: 1, L: 1, G: 1}
	data := abi.Segment{Limit: 0xffffffff, Selector: 0x18, Type: 0x3, Present: 1, S: 1, DB: 1, G: 1}
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.GDT = abi.DTable{Base: gdtGPA, Limit: 4*8 - 1}
	s.CR3 = pml4GPA
	s.CR4 = abi.X86_CR4_PAE
	s.CR0 = abi.X86_CR0_PE | abi.X86_CR0_ET | abi.X86_CR0_NE | abi.X86_CR0_PG
	s.EFER = abi.EFER_LME | abi.EFER_LMA
	if err := cpu.SetSregs(s); err != nil {
		return err
	}
	return cpu.SetRegs(abi.Regs{RIP: codeGPA, RFLAGS: abi.X86_EFLAGS_FIXED, RSP: stackTop})
}

// patternRange is one range of guest pages the probe checksums.
type patternRange struct{ base, pages uint64 }

// fillPattern writes pseudo-random bytes (seeded) over the ranges and
// tells the guest where they are; it returns the sum the guest must report.
func (pv *probeVM) fillPattern(seed uint64, ranges ...patternRange) (uint64, error) {
	if len(ranges) > 2 {
		return 0, fmt.Errorf("the probe checksums at most two ranges")
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var sum uint64
	le := binary.LittleEndian
	for i, r := range ranges {
		page := make([]byte, memory.PageSize)
		for p := range r.pages {
			for j := 0; j < len(page); j += 8 {
				le.PutUint64(page[j:], rng.Uint64())
			}
			if err := pv.mem.Write(r.base+p*memory.PageSize, page); err != nil {
				return 0, err
			}
			sum += le.Uint64(page) + le.Uint64(page[len(page)-8:])
		}
		if err := pv.mem.PutUint64(rangesGPA+16*uint64(i), r.base); err != nil {
			return 0, err
		}
		if err := pv.mem.PutUint64(rangesGPA+16*uint64(i)+8, r.pages); err != nil {
			return 0, err
		}
	}
	return sum, nil
}

// probeEvent is one report from the guest.
type probeEvent struct {
	counter uint32 // on port 0x80
	sum     uint64 // both halves from port 0x81
	isSum   bool
}

// runUntil runs vCPU 0 until stop returns true for a report. It must run
// on a goroutine locked to its OS thread (KVM prefers one thread per
// vCPU).
func (pv *probeVM) runUntil(stop func(probeEvent) bool) error {
	cpu := pv.cpus[0]
	var low uint32
	var haveLow bool
	for {
		exit, err := cpu.Run()
		if errors.Is(err, kvm.ErrInterrupted) {
			continue
		}
		if err != nil {
			return err
		}
		if exit != abi.KVM_EXIT_IO {
			return fmt.Errorf("probe guest: exit reason %d, want KVM_EXIT_IO (%d); internal error %+v", exit, abi.KVM_EXIT_IO, cpu.InternalError())
		}
		port, out, size, data, err := cpu.IO()
		if err != nil {
			return err
		}
		if !out || size != 4 {
			return fmt.Errorf("probe guest: I/O on port %#x out %v size %d, want a 4-byte out", port, out, size)
		}
		v := binary.LittleEndian.Uint32(data)
		var ev probeEvent
		switch port {
		case portCount:
			ev = probeEvent{counter: v}
		case portSum:
			if !haveLow {
				low, haveLow = v, true
				continue
			}
			ev = probeEvent{sum: uint64(v)<<32 | uint64(low), isSum: true}
			haveLow = false
		default:
			return fmt.Errorf("probe guest: out to unexpected port %#x", port)
		}
		if stop(ev) {
			return nil
		}
	}
}

// runCount runs the guest until it reports counter want, failing if it
// reports anything else first than the counters leading there from first.
func (pv *probeVM) runCount(first, want uint32) error {
	next := first
	return pv.runUntil2(func(ev probeEvent) (bool, error) {
		if ev.isSum {
			return false, fmt.Errorf("unexpected checksum report %#x", ev.sum)
		}
		if ev.counter != next {
			return false, fmt.Errorf("probe counter: got %d, want %d", ev.counter, next)
		}
		next++
		return ev.counter == want, nil
	})
}

// checksum asks the guest for its pattern checksum and returns it.
func (pv *probeVM) checksum() (uint64, error) {
	if err := pv.mem.Write(requestGPA, []byte{1}); err != nil {
		return 0, err
	}
	var sum uint64
	err := pv.runUntil2(func(ev probeEvent) (bool, error) {
		if ev.isSum {
			sum = ev.sum
			return true, nil
		}
		return false, nil
	})
	return sum, err
}

func (pv *probeVM) runUntil2(f func(probeEvent) (bool, error)) error {
	var ferr error
	err := pv.runUntil(func(ev probeEvent) bool {
		stop, err := f(ev)
		if err != nil {
			ferr = err
			return true
		}
		return stop
	})
	return errors.Join(err, ferr)
}

// lockThread pins the calling goroutine to its thread for the test.
func lockThread(t testing.TB) {
	runtime.LockOSThread()
	t.Cleanup(runtime.UnlockOSThread)
}
