package snapshot

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	abi "github.com/thawvm/thaw/internal/abi/kvm"
	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/testenv"
	"github.com/thawvm/thaw/internal/vmm/kvm"
	"github.com/thawvm/thaw/internal/vmm/memory"
	"github.com/thawvm/thaw/internal/vmm/vmstate"
)

// template is a snapshot of the probe guest on disk.
type template struct {
	statePath, memPath string
	counter            uint32 // the last counter the guest reported before the snapshot
	sum                uint64 // the pattern checksum the guest must report
}

// makeTemplate boots the probe guest in size bytes of memory with nvcpu
// vCPUs, lets it count to 40 (checking its checksum on the way), and
// snapshots it into dir. The pattern covers 256 pages at 2 MiB and the
// last 64 pages of memory (above 4 GiB for a guest over 3 GiB).
func makeTemplate(t testing.TB, sys *kvm.System, dir string, size uint64, nvcpu int) template {
	t.Helper()
	lockThread(t)
	mem, err := memory.New(size, memory.Backing{NoReserve: true})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	pv, err := buildVM(sys, mem, nvcpu)
	if err != nil {
		t.Fatal(err)
	}
	defer pv.close()
	if err := pv.boot(); err != nil {
		t.Fatal(err)
	}
	regions := mem.Regions()
	last := regions[len(regions)-1]
	sum, err := pv.fillPattern(7, patternRange{patternGPA, 256}, patternRange{last.GPA + last.Size - 64*memory.PageSize, 64})
	if err != nil {
		t.Fatal(err)
	}
	if err := pv.runCount(1, 30); err != nil {
		t.Fatal(err)
	}
	if got, err := pv.checksum(); err != nil || got != sum {
		t.Fatalf("template checksum: got %#x, %v, want %#x", got, err, sum)
	}
	if err := pv.runCount(31, 40); err != nil {
		t.Fatal(err)
	}
	tpl := template{statePath: filepath.Join(dir, "vmstate"), memPath: filepath.Join(dir, "mem"), counter: 40, sum: sum}
	st, err := capture(sys, pv)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteMemory(tpl.memPath, mem); err != nil {
		t.Fatal(err)
	}
	if err := vmstate.WriteFile(tpl.statePath, st); err != nil {
		t.Fatal(err)
	}
	return tpl
}

// capture is what CreateSnapshot does with a paused probe VM.
func capture(sys *kvm.System, pv *probeVM) (*vmstate.State, error) {
	msrs, err := SaveableMSRs(sys, pv.cpus[0])
	if err != nil {
		return nil, err
	}
	xsaveSize, err := sys.CheckExtension(abi.KVM_CAP_XSAVE2)
	if err != nil {
		return nil, err
	}
	st := &vmstate.State{Machine: vmstate.Machine{VCPUCount: len(pv.cpus), MemSizeMib: int(pv.mem.Size() >> 20)}}
	for _, r := range pv.mem.Regions() {
		st.Memory = append(st.Memory, vmstate.Region{GuestPhysAddr: r.GPA, Size: r.Size, FileOffset: r.FileOffset})
	}
	for _, cpu := range pv.cpus {
		if err := CompleteExit(cpu); err != nil {
			return nil, err
		}
		s, err := CaptureVCPU(cpu, msrs, xsaveSize)
		if err != nil {
			return nil, err
		}
		st.VCPUs = append(st.VCPUs, s)
	}
	if st.VM, err = CaptureVM(pv.vm); err != nil {
		return nil, err
	}
	return st, nil
}

// clone is a probe VM restored from a template.
type clone struct {
	*probeVM
	loaded *Loaded
}

func (c *clone) close() {
	c.probeVM.close()
	c.loaded.Close()
}

// restore is what LoadSnapshot does: read the vmstate, load memory from
// the backend, build the VM around it and restore the kernel state.
func restore(ctx context.Context, sys *kvm.System, statePath string, b fcapi.MemBackend, opt LoadOptions) (*clone, error) {
	st, err := vmstate.ReadFile(statePath, 0)
	if err != nil {
		return nil, err
	}
	l, err := LoadMemory(ctx, st, b, opt)
	if err != nil {
		return nil, err
	}
	pv, err := buildVM(sys, l.Memory, st.Machine.VCPUCount)
	if err != nil {
		l.Close()
		return nil, err
	}
	c := &clone{probeVM: pv, loaded: l}
	if err := RestoreVM(pv.vm, st.VM); err != nil {
		c.close()
		return nil, err
	}
	for i, cpu := range pv.cpus {
		if err := RestoreVCPU(cpu, st.VCPUs[i]); err != nil {
			c.close()
			return nil, err
		}
	}
	return c, nil
}

// TestClones restores eight clones at once from one template with each
// backend — File, Uffd served on demand by page servers in this process,
// and Uffd with sequential prefetch served by a page server in another
// process — and checks that every clone's counter continues from the
// snapshot and its pattern checksum matches.
func TestClones(t *testing.T) {
	sys := openKVM(t)
	testenv.RequireUFFD(t)
	tpl := makeTemplate(t, sys, t.TempDir(), 64<<20, 2)
	const clones = 8
	backends := []struct {
		name    string
		backend func(t *testing.T) fcapi.MemBackend
	}{
		{"File", func(*testing.T) fcapi.MemBackend {
			return fcapi.MemBackend{BackendType: fcapi.MemBackendFile, BackendPath: tpl.memPath}
		}},
		{"UffdOnDemand", func(t *testing.T) fcapi.MemBackend {
			return fcapi.MemBackend{BackendType: fcapi.MemBackendUffd, BackendPath: startPageServer(t, modeServe, tpl.memPath)}
		}},
		{"UffdPrefetchProcess", func(t *testing.T) fcapi.MemBackend {
			return fcapi.MemBackend{BackendType: fcapi.MemBackendUffd, BackendPath: startPageServerProc(t, modePrefetch, tpl.memPath).sock}
		}},
	}
	for _, bk := range backends {
		t.Run(bk.name, func(t *testing.T) {
			b := bk.backend(t)
			errs := make([]error, clones)
			var wg sync.WaitGroup
			for i := range clones {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[i] = runClone(sys, tpl, b, uint32(20+i))
				}()
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Errorf("clone %d: %v", i, err)
				}
			}
		})
	}
}

// runClone restores one clone, runs it n more iterations and checks its
// checksum, on a goroutine locked to its thread.
func runClone(sys *kvm.System, tpl template, b fcapi.MemBackend, n uint32) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := restore(ctx, sys, tpl.statePath, b, LoadOptions{})
	if err != nil {
		return err
	}
	defer c.close()
	if err := c.runCount(tpl.counter+1, tpl.counter+n); err != nil {
		return err
	}
	got, err := c.checksum()
	if err != nil {
		return err
	}
	if got != tpl.sum {
		return fmt.Errorf("checksum: got %#x, want %#x", got, tpl.sum)
	}
	if v, _ := c.mem.Uint64(counterGPA); v != uint64(tpl.counter+n) {
		return fmt.Errorf("counter in memory after the checksum: got %d, want %d", v, tpl.counter+n)
	}
	return nil
}

// TestLargeSnapshots snapshots and restores probe guests of 1 GiB and of
// 3 GiB + 64 MiB (two regions, the pattern's second range above 4 GiB),
// with File and Uffd.
func TestLargeSnapshots(t *testing.T) {
	sys := openKVM(t)
	testenv.RequireUFFD(t)
	for _, size := range []uint64{1 << 30, 3<<30 + 64<<20} {
		t.Run(fmt.Sprintf("%dMiB", size>>20), func(t *testing.T) {
			tpl := makeTemplate(t, sys, t.TempDir(), size, 1)
			for _, b := range []fcapi.MemBackend{
				{BackendType: fcapi.MemBackendFile, BackendPath: tpl.memPath},
				{BackendType: fcapi.MemBackendUffd, BackendPath: startPageServer(t, modePrefetch, tpl.memPath)},
			} {
				if err := runClone(sys, tpl, b, 5); err != nil {
					t.Errorf("%s: %v", b.BackendType, err)
				}
			}
		})
	}
}

// TestPageServerKilledMidRestore kills the page server (a separate
// process, SIGKILL) after a clone's load succeeded and while its guest
// still needs unserved pages. The clone runs in a VMM child process (this
// test binary, see vmmMain) that does what thaw-vmm does: watch the page
// server and end with the error when it goes away. A vCPU waiting in
// KVM_RUN for a page that will never come is not interruptible by a
// signal here (measured on PVM: a SIGURG kick does not get it out), so
// ending the process is the only way out, and it must happen promptly.
func TestPageServerKilledMidRestore(t *testing.T) {
	sys := openKVM(t)
	testenv.RequireUFFD(t)
	tpl := makeTemplate(t, sys, t.TempDir(), 64<<20, 1)
	ps := startPageServerProc(t, modeServe, tpl.memPath)
	vmm := startVMMProc(t, tpl, ps.sock)
	ps.kill()
	killed := time.Now()
	vmm.proceed()
	code, stderr := vmm.wait(t, 10*time.Second)
	took := time.Since(killed)
	if code != vmmExitPageServerGone || !strings.Contains(stderr, "the page server exited") {
		t.Errorf("VMM after the page server died: exit code %d, stderr %q; want exit code %d and an error saying the page server exited",
			code, stderr, vmmExitPageServerGone)
	}
	t.Logf("VMM ended %v after the page server was killed: %s", took, strings.TrimSpace(stderr))
}

// TestLoadRejectsForeignFiles loads with a vmstate from another VM size
// and with a truncated or corrupt memory or state file.
func TestLoadRejectsForeignFiles(t *testing.T) {
	sys := openKVM(t)
	dir := t.TempDir()
	small := makeTemplate(t, sys, filepath.Join(mkdir(t, dir, "small")), 32<<20, 1)
	big := makeTemplate(t, sys, filepath.Join(mkdir(t, dir, "big")), 64<<20, 1)
	truncated := filepath.Join(dir, "truncated")
	copyPrefix(t, big.memPath, truncated, 48<<20)
	corrupt := filepath.Join(dir, "corrupt-state")
	copyFlip(t, big.statePath, corrupt, 100)
	file := func(p string) fcapi.MemBackend {
		return fcapi.MemBackend{BackendType: fcapi.MemBackendFile, BackendPath: p}
	}
	tests := []struct {
		name  string
		state string
		b     fcapi.MemBackend
		want  string
	}{
		{"vmstate of a smaller VM", small.statePath, file(big.memPath), "the vmstate of another VM"},
		{"truncated memory file", big.statePath, file(truncated), "truncated"},
		{"corrupt vmstate", corrupt, file(big.memPath), "corrupt"},
		{"memory file as vmstate", big.memPath, file(big.memPath), "not a thaw vmstate file"},
	}
	for _, tt := range tests {
		c, err := restore(context.Background(), sys, tt.state, tt.b, LoadOptions{})
		if err == nil {
			c.close()
			t.Errorf("%s: restore succeeded", tt.name)
			continue
		}
		if !containsFold(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}
