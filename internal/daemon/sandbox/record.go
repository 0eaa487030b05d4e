package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/thawvm/thaw/internal/daemon/disk"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/daemon/template"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/shim"
)

// RecordFunc returns the recording run template registration uses, or nil
// when prefetch (and so recording) is off.
func (m *Manager) RecordFunc() template.Recorder {
	if !m.opts.Prefetch {
		return nil
	}
	return func(ctx context.Context, r template.RecordSpec) (template.Recording, error) {
		return m.Record(ctx, RecordRequest{VMState: r.VMState, Memory: r.Memory, Rootfs: r.Rootfs, RootDrive: r.RootDrive,
			Log: r.Log, Ready: r.Ready, Warmup: r.Warmup, Progress: r.Progress, Max: m.opts.RecordMax})
	}
}

// RecordRequest describes a build's recording run.
type RecordRequest struct {
	// VMState and Memory are the build's snapshot files (absolute).
	VMState, Memory string
	// Rootfs is the build's disk (absolute); the run's VM gets a clone of
	// it, as a sandbox does, so the guest never writes the build's files.
	Rootfs string
	// RootDrive is the build's store.Build.RootDrive.
	RootDrive string
	// Log is where the access log is written (absolute).
	Log   string
	Ready store.ReadyCheck
	// Warmup are run through the agent after the ready check, in order;
	// their output goes to Progress (if set).
	Warmup   [][]string
	Progress io.Writer
	// Max bounds the wait for the settle detector (THAW_UFFD_RECORD_MAX).
	Max time.Duration
}

// Record runs a build's recording run (DESIGN.md "Page serving",
// Recording): it restores the snapshot once under a recording page server
// (prefetch off) in an ephemeral VM whose id starts "build-" and which is
// never stored, drives the same post-restore sequence a create drives (load,
// handshake verdict, ready check), runs the warm-up commands through the
// agent, waits until the settle detector says the fault rate has converged
// (at most Max, counted from the handshake), stops the VM and returns the
// number of pages recorded into Log with the run's phases: record-restore
// (disk clone, shim, load, handshake verdict), record-ready (the ready
// check), record-warmup (only with warm-up commands), record-settle (until
// the settle detector converged) and record-stop. The recorder writes
// every page installed until the stop, so the warm-up's pages are in the
// log in the order they were touched even when the detector settled during
// the warm-up. Each phase is reported to Progress (if set) as it ends.
// Nothing of the VM is left afterwards.
func (m *Manager) Record(ctx context.Context, r RecordRequest) (rec template.Recording, err error) {
	begun := time.Now()
	phase := func(name string) {
		now := time.Now()
		rec.Phases = append(rec.Phases, store.Phase{Name: name, Duration: now.Sub(begun)})
		if r.Progress != nil {
			fmt.Fprintf(r.Progress, "==> %s: %v\n", name, now.Sub(begun).Round(time.Millisecond))
		}
		begun = now
	}
	var rnd [4]byte
	rand.Read(rnd[:])
	id := store.EphemeralPrefix + hex.EncodeToString(rnd[:])
	dir, err := m.opts.Layout.ScratchDir(id + "-")
	if err != nil {
		return template.Recording{}, err
	}
	defer os.RemoveAll(dir)
	log := m.log.With("vm", id)
	if r.Rootfs != "" {
		if err := disk.Clone(r.Rootfs, filepath.Join(dir, DiskName)); err != nil {
			return template.Recording{}, fmt.Errorf("recording run: cloning the disk: %w", err)
		}
	}
	h, err := shim.Start(ctx, m.opts.Shim, shim.Config{ID: id, Dir: dir, VMM: m.opts.VMM, Procs: m.opts.ShimProcs, Pages: shim.PagesRecord,
		MemFile: r.Memory, RecordLog: r.Log, SettleMax: r.Max, StopGrace: m.opts.StopGrace,
		HandshakeTimeout: m.opts.LoadTimeout + m.opts.ReadyTimeout})
	if err != nil {
		return template.Recording{}, fmt.Errorf("recording run: starting the shim: %w", err)
	}
	stopped := false
	defer func() {
		if stopped {
			return
		}
		if _, serr := m.stopShim(context.WithoutCancel(ctx), h); serr != nil {
			err = errors.Join(err, fmt.Errorf("recording run: %w", serr))
		}
	}()
	p := fcapi.SnapshotLoadParams{SnapshotPath: r.VMState, ResumeVM: true,
		MemBackend: &fcapi.MemBackend{BackendType: fcapi.MemBackendUffd, BackendPath: h.UFFDSocket}}
	if agentReady(r.Ready) {
		p.VsockOverride = &fcapi.VsockOverride{UDSPath: filepath.Join(dir, VsockName)}
	}
	if r.RootDrive != "" {
		p.ResumeVM = false
	}
	lctx, cancel := context.WithTimeout(ctx, m.opts.LoadTimeout)
	err = loadSnapshot(lctx, h, p, m.opts.LoadTimeout)
	if err == nil && r.RootDrive != "" {
		err = swapRootDrive(lctx, h, r.RootDrive, filepath.Join(dir, DiskName), m.opts.LoadTimeout)
	}
	cancel()
	if err != nil {
		return template.Recording{}, fmt.Errorf("recording run: %w", err)
	}
	vctx, cancel := context.WithTimeout(ctx, m.opts.ReadyTimeout)
	v, err := h.Handshake(vctx)
	cancel()
	if err != nil {
		return template.Recording{}, fmt.Errorf("recording run: asking for the handshake verdict: %w", err)
	}
	if v.State != shim.VerdictOK {
		return template.Recording{}, fmt.Errorf("recording run: page server handshake %s: %s", v.State, v.Reason)
	}
	phase("record-restore")
	if err := waitReady(ctx, h, r.Ready, m.opts.ReadyTimeout, id, nil); err != nil {
		return template.Recording{}, fmt.Errorf("recording run: %w", err)
	}
	phase("record-ready")
	if len(r.Warmup) > 0 {
		if !agentReady(r.Ready) {
			return template.Recording{}, errdefs.InvalidArgument("recording run: warm-up commands need the agent, and the ready check is %q", r.Ready.Kind)
		}
		if err := warmUp(ctx, h, r.Warmup, r.Progress); err != nil {
			return template.Recording{}, fmt.Errorf("recording run: %w", err)
		}
		phase("record-warmup")
	}
	sctx, cancel := context.WithTimeout(ctx, r.Max+10*time.Second)
	st, err := h.Settle(sctx, true)
	cancel()
	if err != nil {
		return template.Recording{}, fmt.Errorf("recording run: waiting for the settle detector: %w", err)
	}
	if st.Error != "" {
		return template.Recording{}, fmt.Errorf("recording run: the recorder failed: %s", st.Error)
	}
	phase("record-settle")
	// Stopping the VM closes the log; the final count includes pages
	// installed between the settle and the stop.
	stopped = true
	fin, err := m.stopShim(ctx, h)
	if err != nil {
		return template.Recording{}, fmt.Errorf("recording run: %w", err)
	}
	if fin.Settle != nil {
		if fin.Settle.Error != "" {
			return template.Recording{}, fmt.Errorf("recording run: the recorder failed: %s", fin.Settle.Error)
		}
		st.Pages = fin.Settle.Pages
	}
	phase("record-stop")
	log.Info("recording settled", "pages", st.Pages, "settled", st.Settled, "reason", st.Reason, "after", st.After)
	rec.Pages = st.Pages
	return rec, nil
}
