package snapshot

import (
	"testing"

	abi "github.com/thawvm/thaw/internal/abi/kvm"
	"github.com/thawvm/thaw/internal/vmm/memory"
	"github.com/thawvm/thaw/internal/vmm/vmstate"
)

// captureAll stops pv's vCPUs (CompleteExit) and captures the VM and
// every vCPU into a State over pv's memory layout.
func captureAll(t testing.TB, pv *probeVM, msrs []uint32, xsaveSize int) *vmstate.State {
	t.Helper()
	st := &vmstate.State{Machine: vmstate.Machine{VCPUCount: len(pv.cpus), MemSizeMib: int(pv.mem.Size() >> 20)}}
	for _, r := range pv.mem.Regions() {
		st.Memory = append(st.Memory, vmstate.Region{GuestPhysAddr: r.GPA, Size: r.Size, FileOffset: r.FileOffset})
	}
	for _, cpu := range pv.cpus {
		if err := CompleteExit(cpu); err != nil {
			t.Fatal(err)
		}
		s, err := CaptureVCPU(cpu, msrs, xsaveSize)
		if err != nil {
			t.Fatal(err)
		}
		st.VCPUs = append(st.VCPUs, s)
	}
	var err error
	if st.VM, err = CaptureVM(pv.vm); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestVCPURestoreContinues runs the probe guest, captures its VM and vCPU
// state mid-loop, restores it (through the vmstate encoding) into a fresh
// VM over a copy of its memory, and checks the guest carries on: the next
// counter is the one after the snapshot, in memory and in RBX, and the
// pattern checksum still matches.
func TestVCPURestoreContinues(t *testing.T) {
	sys := openKVM(t)
	lockThread(t)
	const size = 16 << 20
	mem, err := memory.New(size, memory.Backing{})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	src := newProbeVM(t, sys, mem, 2)
	if err := src.boot(); err != nil {
		t.Fatal(err)
	}
	want, err := src.fillPattern(1, patternRange{patternGPA, 64}, patternRange{size - 8*memory.PageSize, 8})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.runCount(1, 40); err != nil {
		t.Fatal(err)
	}
	if got, err := src.checksum(); err != nil || got != want {
		t.Fatalf("checksum before the snapshot: got %#x, %v, want %#x", got, err, want)
	}
	if err := src.runCount(41, 50); err != nil {
		t.Fatal(err)
	}

	msrs, err := SaveableMSRs(sys, src.cpus[0])
	if err != nil {
		t.Fatal(err)
	}
	xsaveSize, err := sys.CheckExtension(abi.KVM_CAP_XSAVE2)
	if err != nil {
		t.Fatal(err)
	}
	st := captureAll(t, src, msrs, xsaveSize)
	if got := st.VCPUs[0].Regs.V.RBX; got != 50 {
		t.Errorf("captured RBX: got %d, want 50", got)
	}
	enc, err := vmstate.Encode(st)
	if err != nil {
		t.Fatal(err)
	}
	st, err = vmstate.Decode(enc, 0)
	if err != nil {
		t.Fatal(err)
	}

	mem2, err := memory.New(size, memory.Backing{})
	if err != nil {
		t.Fatal(err)
	}
	defer mem2.Close()
	all, _ := mem.Slice(0, size)
	all2, _ := mem2.Slice(0, size)
	copy(all2, all)
	dst := newProbeVM(t, sys, mem2, 2)
	if err := RestoreVM(dst.vm, st.VM); err != nil {
		t.Fatal(err)
	}
	for i, cpu := range dst.cpus {
		if err := RestoreVCPU(cpu, st.VCPUs[i]); err != nil {
			t.Fatalf("restoring vcpu %d: %v", i, err)
		}
	}
	if err := dst.runCount(51, 80); err != nil {
		t.Fatalf("restored guest: %v", err)
	}
	if got, err := dst.checksum(); err != nil || got != want {
		t.Fatalf("checksum after the restore: got %#x, %v, want %#x", got, err, want)
	}
	if got, _ := mem2.Uint64(counterGPA); got < 80 {
		t.Errorf("counter in restored memory: got %d, want at least 80", got)
	}
	// The source is independent and also continues from where it stopped.
	if err := src.runCount(51, 52); err != nil {
		t.Errorf("source guest after the capture: %v", err)
	}

	// Each piece of state survives set-then-get on the restored vCPU.
	again, err := CaptureVCPU(dst.cpus[1], msrs, xsaveSize)
	if err != nil {
		t.Fatal(err)
	}
	if again.MPState != st.VCPUs[1].MPState || again.Sregs != st.VCPUs[1].Sregs || again.LAPIC != st.VCPUs[1].LAPIC {
		t.Errorf("idle vcpu 1 after restore: MP state %d, sregs/LAPIC equal %v/%v; want MP state %d and equal state",
			again.MPState, again.Sregs == st.VCPUs[1].Sregs, again.LAPIC == st.VCPUs[1].LAPIC, st.VCPUs[1].MPState)
	}
}

func TestRestoreVCPURejectsWrongID(t *testing.T) {
	sys := openKVM(t)
	mem, err := memory.New(2<<20, memory.Backing{})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	pv := newProbeVM(t, sys, mem, 2)
	s, err := CaptureVCPU(pv.cpus[1], nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := RestoreVCPU(pv.cpus[0], s); err == nil {
		t.Errorf("RestoreVCPU of vcpu 1's state into vcpu 0: got nil error")
	}
}
