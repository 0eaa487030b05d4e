package vmm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	kabi "github.com/thawvm/thaw/internal/abi/kvm"
	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/vmm/boot"
	"github.com/thawvm/thaw/internal/vmm/i8042"
	"github.com/thawvm/thaw/internal/vmm/kvm"
	"github.com/thawvm/thaw/internal/vmm/serial"
	"github.com/thawvm/thaw/internal/vmm/snapshot"
	"github.com/thawvm/thaw/internal/vmm/vmstate"
)

// Device kinds and IDs in the vmstate for the legacy devices.
const (
	devSerial = "serial"
	devI8042  = "i8042"
	idCOM1    = "com1"
)

// CreateSnapshot implements api.Machine: PUT /snapshot/create. It writes a
// Full snapshot of the paused machine: the VM state (vCPUs, in-kernel
// irqchip, PIT and clock, legacy devices, virtio devices with their
// transports) to p.SnapshotPath in internal/vmm/vmstate's format, and guest
// memory to p.MemFilePath (the regions, raw, concatenated; sparse). The
// machine stays paused. Live vsock connections are reset, as in
// Firecracker: the transports are paused while their state is read.
func (m *Machine) CreateSnapshot(ctx context.Context, p fcapi.SnapshotCreateParams) error {
	if err := p.Validate(); err != nil {
		return err
	}
	if p.Type() != fcapi.SnapshotFull {
		return fmt.Errorf("snapshot_type %q: thaw-vmm takes %q snapshots only (diff snapshots need dirty page tracking, not implemented)", p.Type(), fcapi.SnapshotFull)
	}
	// ctl keeps Resume and Close out while the snapshot is written, so the
	// vCPUs stay parked and the hardware stays in place; mu is released
	// so that state queries do not wait for a multi-GiB write.
	m.ctl.Lock()
	defer m.ctl.Unlock()
	m.mu.Lock()
	state, hw, drives := m.state, m.hw, m.cfg.Drives
	m.mu.Unlock()
	if state != Paused {
		return fmt.Errorf("%w: snapshots are taken of a paused machine, this one is %s (PATCH /vm Paused first)", ErrState, state)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	start := time.Now()
	// The virtio devices work on guest memory from their own goroutines
	// and go on serving while the vCPUs are parked. Stop them for the
	// whole snapshot: the queue positions saved and the rings in the
	// memory file must describe the same moment, and no device may raise
	// an interrupt after the irqchip's state was read. A device restarted
	// between the two (as a vsock transport resumes with a TRANSPORT_RESET
	// event) would leave a memory file ahead of the vmstate, and every
	// clone would complete the same descriptors a second time.
	pauseVirtio(hw)
	defer resumeVirtio(hw)
	st, err := captureMachine(hw, drives)
	if err != nil {
		return fmt.Errorf("capturing the VM state: %w", err)
	}
	if err := snapshot.WriteMemory(p.MemFilePath, hw.mem); err != nil {
		return err
	}
	if err := vmstate.WriteFile(p.SnapshotPath, st); err != nil {
		return err
	}
	m.log.Info("snapshot created", "snapshot_path", p.SnapshotPath, "mem_file_path", p.MemFilePath,
		"mem_mib", hw.mem.Size()>>20, "took", time.Since(start))
	return nil
}

// captureMachine reads the state of a paused machine's hardware; its virtio
// transports must be paused too (pauseVirtio).
func captureMachine(hw *hardware, drives []DriveConfig) (*vmstate.State, error) {
	st := &vmstate.State{Machine: vmstate.Machine{VCPUCount: len(hw.vcpus), MemSizeMib: int(hw.mem.Size() >> 20)}}
	for _, r := range hw.mem.Regions() {
		st.Memory = append(st.Memory, vmstate.Region{GuestPhysAddr: r.GPA, Size: r.Size, FileOffset: r.FileOffset})
	}
	msrs, err := snapshot.SaveableMSRs(hw.sys, hw.vcpus[0].cpu)
	if err != nil {
		return nil, err
	}
	xsaveSize, err := hw.sys.CheckExtension(kabi.KVM_CAP_XSAVE2)
	if err != nil {
		return nil, err
	}
	for _, v := range hw.vcpus {
		// A parked vCPU may have returned from an I/O exit that KVM
		// completes on the next KVM_RUN; complete it before reading state.
		if err := snapshot.CompleteExit(v.cpu); err != nil {
			return nil, err
		}
		s, err := snapshot.CaptureVCPU(v.cpu, msrs, xsaveSize)
		if err != nil {
			return nil, err
		}
		st.VCPUs = append(st.VCPUs, s)
	}
	if st.VM, err = snapshot.CaptureVM(hw.vm); err != nil {
		return nil, err
	}
	ser, err := json.Marshal(hw.serial.State())
	if err != nil {
		return nil, err
	}
	kbd, err := json.Marshal(hw.i8042.State())
	if err != nil {
		return nil, err
	}
	st.Devices = append(st.Devices,
		vmstate.Device{Kind: devSerial, ID: idCOM1, State: ser},
		vmstate.Device{Kind: devI8042, ID: devI8042, State: kbd})
	devs, err := captureVirtio(hw, drives)
	if err != nil {
		return nil, err
	}
	st.Devices = append(st.Devices, devs...)
	return st, nil
}

// LoadSnapshot implements api.Machine: PUT /snapshot/load, as the first
// call on a fresh machine. It rebuilds the VM from the snapshot instead of
// booting: guest memory from p.MemBackend (File: the memory file mapped
// MAP_PRIVATE; Uffd: a page server on the backend's socket, see
// snapshot.LoadMemory), then the in-kernel devices, the legacy devices,
// every vCPU's state and the virtio devices at their saved MMIO windows and
// GSIs (drives reopen their saved path_on_host, which PATCH /drives can
// change before the machine resumes; vsock listens on its saved uds_path or
// p.VsockOverride's). The machine is left Paused with its vCPU threads
// parked; the API server resumes it when resume_vm is set.
//
// With the Uffd backend the machine watches the page server for the rest
// of its life: if it exits, the machine stops with that error, and since a
// vCPU waiting for a page that will never come cannot be interrupted (not
// by a signal on kvm_pvm), the machine kills itself (Kill: it releases
// its userfaultfd, which wakes every waiter) when the vCPUs do not return
// at once. It never exits the process, which may be a shim running the
// builtin VMM.
func (m *Machine) LoadSnapshot(ctx context.Context, p fcapi.SnapshotLoadParams) error {
	p = p.Normalized()
	if err := p.Validate(); err != nil {
		return err
	}
	if p.TrackDirtyPages {
		return errors.New("track_dirty_pages: dirty page tracking (diff snapshots) is not implemented in thaw-vmm; set it to false")
	}
	if len(p.NetworkOverrides) > 0 {
		return fmt.Errorf("network_overrides: the snapshot has no network interface %q (thaw-vmm has no network devices yet)", p.NetworkOverrides[0].IfaceID)
	}
	m.ctl.Lock()
	defer m.ctl.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state != NotStarted {
		return fmt.Errorf("%w: a snapshot loads only into a fresh machine, this one is %s", ErrState, m.state)
	}
	st, err := vmstate.ReadFile(p.SnapshotPath, 0)
	if err != nil {
		return err
	}
	if st.Machine.VCPUCount > boot.MaxVCPUs {
		return fmt.Errorf("the snapshot has %d vCPUs, thaw-vmm supports at most %d", st.Machine.VCPUCount, boot.MaxVCPUs)
	}
	start := time.Now()
	loaded, err := snapshot.LoadMemory(ctx, st, *p.MemBackend, snapshot.LoadOptions{})
	if err != nil {
		return err
	}
	cfg := m.cfg.withDefaults()
	hw, devs, err := m.restoreHardware(cfg, st, loaded, p.VsockOverride)
	if err != nil {
		return err
	}
	m.cfg.VCPUs, m.cfg.MemMiB = st.Machine.VCPUCount, uint64(st.Machine.MemSizeMib)
	m.cfg.Drives, m.cfg.Vsock = devs.drives, devs.vsock
	m.hw = hw
	m.loaded.Store(loaded)
	m.nvcpus = len(hw.vcpus)
	m.state = Paused
	for _, v := range hw.vcpus {
		go m.runVCPU(v)
	}
	hw.restored.watch(m)
	m.log.Info("snapshot loaded", "snapshot_path", p.SnapshotPath, "backend", p.MemBackend.BackendType,
		"vcpus", st.Machine.VCPUCount, "mem_mib", st.Machine.MemSizeMib, "took", time.Since(start))
	return nil
}

// restoreHardware builds the machine's hardware around restored memory
// and writes the snapshot's state into it. It mirrors build (keep the two
// in step) minus the kernel load; on failure it releases everything,
// loaded included.
func (m *Machine) restoreHardware(cfg Config, st *vmstate.State, loaded *snapshot.Loaded, vo *fcapi.VsockOverride) (_ *hardware, _ restoredDevices, err error) {
	hw := &hardware{mem: loaded.Memory, restored: &restored{loaded: loaded}}
	defer func() {
		if err != nil {
			hw.close()
		}
	}()
	if hw.sys, err = kvm.Open(cfg.KVMPath); err != nil {
		return nil, restoredDevices{}, err
	}
	if hw.vm, err = hw.sys.CreateVM(); err != nil {
		return nil, restoredDevices{}, err
	}
	for i, r := range hw.mem.Regions() {
		if err = hw.vm.SetUserMemoryRegion(kabi.UserspaceMemoryRegion{
			Slot: uint32(i), GuestPhysAddr: r.GPA, MemorySize: r.Size, UserspaceAddr: r.HostAddr(),
		}); err != nil {
			return nil, restoredDevices{}, err
		}
	}
	if err = hw.vm.SetTSSAddr(tssAddr); err != nil {
		return nil, restoredDevices{}, err
	}
	if err = hw.vm.CreateIRQChip(); err != nil {
		return nil, restoredDevices{}, err
	}
	if err = hw.vm.CreatePIT2(kabi.KVM_PIT_SPEAKER_DUMMY); err != nil {
		return nil, restoredDevices{}, err
	}
	hw.serial = serial.New(cfg.Serial, irqLine{hw.vm, COM1IRQ})
	if err = hw.pio.Add("serial", COM1Port, serial.Size, hw.serial); err != nil {
		return nil, restoredDevices{}, err
	}
	hw.i8042 = i8042.New(irqLine{hw.vm, I8042IRQ}, func() {
		m.stop(Exit{Reason: "guest reset through the i8042"})
	})
	if err = hw.pio.Add("i8042", i8042.Base, i8042.Size, hw.i8042); err != nil {
		return nil, restoredDevices{}, err
	}
	for _, d := range st.Devices {
		if isVirtio(d.Kind) {
			continue
		}
		if err := restoreLegacy(hw, d); err != nil {
			return nil, restoredDevices{}, err
		}
	}
	for i := range st.Machine.VCPUCount {
		cpu, err := hw.vm.CreateVCPU(i)
		if err != nil {
			return nil, restoredDevices{}, err
		}
		hw.vcpus = append(hw.vcpus, &vcpu{cpu: cpu})
	}
	// Per-VM state after the vCPUs exist (their LAPICs are part of the
	// irqchip) and before their state, as Firecracker restores.
	if err = snapshot.RestoreVM(hw.vm, st.VM); err != nil {
		return nil, restoredDevices{}, err
	}
	for i, v := range hw.vcpus {
		if err = snapshot.RestoreVCPU(v.cpu, st.VCPUs[i]); err != nil {
			return nil, restoredDevices{}, err
		}
	}
	// Virtio devices last: re-activating one starts its work on guest
	// memory and may raise its pending interrupt, which must land in the
	// restored irqchip.
	devs, err := m.restoreVirtio(hw, st.Devices, vo)
	if err != nil {
		return nil, restoredDevices{}, err
	}
	return hw, devs, nil
}

// restoreLegacy restores one legacy device's state; devices this build
// does not know are refused, naming them, rather than silently dropped.
func restoreLegacy(hw *hardware, d vmstate.Device) error {
	switch {
	case d.Kind == devSerial && d.ID == idCOM1:
		var s serial.State
		if err := json.Unmarshal(d.State, &s); err != nil {
			return fmt.Errorf("restoring serial %s: %w", d.ID, err)
		}
		hw.serial.SetState(s)
	case d.Kind == devI8042:
		var s i8042.State
		if err := json.Unmarshal(d.State, &s); err != nil {
			return fmt.Errorf("restoring the i8042: %w", err)
		}
		hw.i8042.SetState(s)
	default:
		return fmt.Errorf("the snapshot has a %s device %q that this build of thaw-vmm cannot restore", d.Kind, d.ID)
	}
	return nil
}

// pageServerGrace is how long the machine waits for its vCPUs to return
// after the page server went away before it kills itself.
const pageServerGrace = 2 * time.Second

// restored is what a machine restored from a snapshot holds beyond a
// booted one: the loaded memory (its userfaultfd and page server pidfd)
// and the goroutine watching the page server.
type restored struct {
	loaded *snapshot.Loaded
	cancel context.CancelFunc
	done   chan struct{}
}

// watch starts watching the page server (Uffd backend only).
func (r *restored) watch(m *Machine) {
	if r.loaded.Backend != fcapi.MemBackendUffd {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.done = cancel, make(chan struct{})
	go func() {
		defer close(r.done)
		err := r.loaded.WatchPageServer(ctx)
		if err == nil || ctx.Err() != nil {
			return
		}
		// stop takes m.mu, which Close may hold while it waits for this
		// goroutine: stop from a goroutine of its own.
		go m.stop(Exit{Reason: "the page server went away", Err: err})
		select {
		case <-m.Done():
		case <-ctx.Done():
		case <-time.After(pageServerGrace):
			// The page server's copy of the userfaultfd died with it;
			// releasing ours wakes every thread waiting for a page (they
			// read zeros from then on: harmless to a stopping machine).
			m.log.Error("vCPUs blocked on guest memory nobody can serve: releasing the userfaultfd", "err", err)
			m.Kill("the page server went away")
		}
	}()
}

// close stops the watcher and releases the loaded memory; the VM must be
// closed first.
func (r *restored) close() error {
	if r.cancel != nil {
		r.cancel()
		<-r.done
	}
	return r.loaded.Close()
}
