package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/thawvm/thaw/internal/agentapi"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/daemon/template"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/shim"
)

// BuildBootArgs is the build VM's kernel command line: serial console, a
// reboot ends the VMM, no PCI probing (the devices are virtio-mmio), the
// disk as root, quiet so the console does not slow the boot.
const BuildBootArgs = "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw quiet"

// buildBootTimeout bounds the boot of a build VM up to its ready check.
const buildBootTimeout = 3 * time.Minute

// BootSnapshot is template.Builder's Booter: it boots r's kernel and disk
// in an ephemeral VM (id r.ID, never stored, no page server) under a shim,
// with the disk and vsock on the VMM's API, waits for the agent, runs the
// steps (output into log; a step that fails fails the build), starts
// r.Start detached, runs the ready check, pauses, takes a Full snapshot
// into r.VMState and r.Memory and stops the VM. The VM is stopped whatever
// happens. It returns how long each phase took: shim, boot (to the agent's
// first answer), steps, start, ready, snapshot, stop.
func (m *Manager) BootSnapshot(ctx context.Context, r template.BootRequest, log io.Writer) (phases []store.Phase, err error) {
	begun := time.Now()
	// phase ends the running phase, named name, and logs its time.
	phase := func(name string) {
		now := time.Now()
		phases = append(phases, store.Phase{Name: name, Duration: now.Sub(begun)})
		fmt.Fprintf(log, "==> %s: %v\n", name, now.Sub(begun).Round(time.Millisecond))
		begun = now
	}
	h, err := shim.Start(ctx, m.opts.Shim, shim.Config{ID: r.ID, Dir: r.Dir, VMM: m.opts.VMM, Procs: m.opts.ShimProcs, Pages: shim.PagesNone,
		StopGrace: m.opts.StopGrace, HandshakeTimeout: m.opts.LoadTimeout + m.opts.ReadyTimeout})
	if err != nil {
		return nil, fmt.Errorf("starting the shim: %w", err)
	}
	phase("shim")
	defer func() {
		begun = time.Now()
		if _, serr := m.stopShim(context.WithoutCancel(ctx), h); serr != nil {
			err = errors.Join(err, serr)
		}
		if err == nil {
			phase("stop")
		}
	}()
	fail := func(step string, err error) ([]store.Phase, error) {
		return nil, fmt.Errorf("%s: %w%s", step, err, vmmTail(h.Dir))
	}
	fc := fcapi.NewClient(h.APISocket)
	defer fc.Close()
	rel := func(p string) string {
		if filepath.Dir(p) == r.Dir {
			return filepath.Base(p) // the snapshot records it relative, as sandboxes expect
		}
		return p
	}
	fmt.Fprintf(log, "==> booting %s: %d vCPU, %d MiB\n", r.ID, r.VCPUs, r.MemoryMiB)
	for _, s := range []struct {
		name string
		do   func() error
	}{
		{"PUT /boot-source", func() error {
			return fc.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: r.Kernel, BootArgs: BuildBootArgs})
		}},
		{"PUT /machine-config", func() error {
			return fc.PutMachineConfig(ctx, fcapi.MachineConfig{VcpuCount: r.VCPUs, MemSizeMib: r.MemoryMiB})
		}},
		{"PUT /drives/rootfs", func() error {
			return fc.PutDrive(ctx, fcapi.Drive{DriveID: template.RootDriveID, PathOnHost: rel(r.Rootfs), IsRootDevice: true})
		}},
		{"PUT /vsock", func() error { return fc.PutVsock(ctx, fcapi.Vsock{GuestCID: 3, UDSPath: VsockName}) }},
		{"InstanceStart", func() error { return fc.InstanceStart(ctx) }},
	} {
		if err := s.do(); err != nil {
			return fail(s.name, err)
		}
	}
	ac := agentapi.NewClient(agentapi.VsockDialer(filepath.Join(h.Dir, VsockName), agentapi.DefaultVsockPort))
	closed := false
	defer func() {
		if !closed {
			ac.Close()
		}
	}()
	bctx, cancel := context.WithTimeout(ctx, buildBootTimeout)
	hl, err := ac.WaitReady(bctx, 200*time.Millisecond)
	cancel()
	if err != nil {
		return fail("waiting for the agent", timeoutKind(bctx, err))
	}
	fmt.Fprintf(log, "==> agent ready (protocol %d)\n", hl.Protocol)
	phase("boot")
	for i, st := range r.Steps {
		fmt.Fprintf(log, "==> step %d/%d: %s\n", i+1, len(r.Steps), st.Shell)
		ex, err := ac.Exec(ctx, agentapi.ExecRequest{Shell: st.Shell, Env: st.Env, Cwd: st.Workdir}, nil, log, log)
		if err != nil {
			return fail(fmt.Sprintf("step %d (%s)", i+1, st.Shell), err)
		}
		if ex.Code != 0 || ex.Signal != 0 {
			return nil, errdefs.FailedPrecondition("step %d (%s) ended with %s", i+1, st.Shell, ex)
		}
	}
	if len(r.Steps) > 0 {
		phase("steps")
	}
	if r.Start != "" {
		fmt.Fprintf(log, "==> start: %s\n", r.Start)
		ex, err := ac.Start(ctx, agentapi.ExecRequest{Shell: r.Start, Detach: true})
		if err != nil {
			return fail(fmt.Sprintf("start command (%s)", r.Start), err)
		}
		ex.Close() // detached: it keeps running
		phase("start")
	}
	rctx, cancel := context.WithTimeout(ctx, m.opts.ReadyTimeout)
	if r.Ready.Kind == store.ReadySerial {
		err = waitSerial(rctx, h, r.Ready.Marker, m.opts.ReadyTimeout)
	} else {
		wctx, release := endWithVM(rctx, h, "its agent answered")
		_, err = ac.WaitReady(wctx, 50*time.Millisecond)
		err = vmEndedOr(wctx, err)
		release()
	}
	cancel()
	if err != nil {
		return fail("ready check", timeoutKind(rctx, err))
	}
	ac.Close() // no live agent connection may go into the snapshot
	closed = true
	phase("ready")
	fmt.Fprintln(log, "==> pausing and taking a Full snapshot")
	if err := fc.Pause(ctx); err != nil {
		return fail("pausing", err)
	}
	if err := fc.CreateSnapshot(ctx, fcapi.SnapshotCreateParams{SnapshotType: fcapi.SnapshotFull,
		SnapshotPath: r.VMState, MemFilePath: r.Memory}); err != nil {
		return fail("PUT /snapshot/create", err)
	}
	phase("snapshot")
	return phases, nil
}
