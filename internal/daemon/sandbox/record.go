package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/shim"
)

// RecordFunc returns the recording run template registration uses, or nil
// when prefetch (and so recording) is off.
func (m *Manager) RecordFunc() func(ctx context.Context, vmstate, memory, logPath string, ready store.ReadyCheck) (int, error) {
	if !m.opts.Prefetch {
		return nil
	}
	return func(ctx context.Context, vmstate, memory, logPath string, ready store.ReadyCheck) (int, error) {
		return m.Record(ctx, RecordRequest{VMState: vmstate, Memory: memory, Log: logPath, Ready: ready, Max: m.opts.RecordMax})
	}
}

// RecordRequest describes a build's recording run.
type RecordRequest struct {
	// VMState and Memory are the build's snapshot files (absolute).
	VMState, Memory string
	// Log is where the access log is written (absolute).
	Log   string
	Ready store.ReadyCheck
	// Max bounds the wait for the settle detector (THAW_UFFD_RECORD_MAX).
	Max time.Duration
}

// Record runs a build's recording run (DESIGN.md "Page serving",
// Recording): it restores the snapshot once under a recording page server
// (prefetch off) in an ephemeral VM whose id starts "build-" and which is
// never stored, drives the same post-restore sequence a create drives (load,
// handshake verdict, ready check), waits until the settle detector says the
// fault rate has converged (at most Max), stops the VM and returns the
// number of pages recorded into Log. Nothing of the VM is left afterwards.
func (m *Manager) Record(ctx context.Context, r RecordRequest) (pages int, err error) {
	var rnd [4]byte
	rand.Read(rnd[:])
	id := store.EphemeralPrefix + hex.EncodeToString(rnd[:])
	dir, err := m.opts.Layout.ScratchDir(id + "-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	log := m.log.With("vm", id)
	h, err := shim.Start(ctx, m.opts.Shim, shim.Config{ID: id, Dir: dir, VMM: m.opts.VMM, Pages: shim.PagesRecord,
		MemFile: r.Memory, RecordLog: r.Log, SettleMax: r.Max, StopGrace: m.opts.StopGrace,
		HandshakeTimeout: m.opts.LoadTimeout + m.opts.ReadyTimeout})
	if err != nil {
		return 0, fmt.Errorf("recording run: starting the shim: %w", err)
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
	lctx, cancel := context.WithTimeout(ctx, m.opts.LoadTimeout)
	err = loadSnapshot(lctx, h, p, m.opts.LoadTimeout)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("recording run: %w", err)
	}
	vctx, cancel := context.WithTimeout(ctx, m.opts.ReadyTimeout)
	v, err := h.Handshake(vctx)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("recording run: asking for the handshake verdict: %w", err)
	}
	if v.State != shim.VerdictOK {
		return 0, fmt.Errorf("recording run: page server handshake %s: %s", v.State, v.Reason)
	}
	if err := waitReady(ctx, h, r.Ready, m.opts.ReadyTimeout, id, nil); err != nil {
		return 0, fmt.Errorf("recording run: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, r.Max+10*time.Second)
	st, err := h.Settle(sctx, true)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("recording run: waiting for the settle detector: %w", err)
	}
	if st.Error != "" {
		return 0, fmt.Errorf("recording run: the recorder failed: %s", st.Error)
	}
	// Stopping the VM closes the log; the final count includes pages
	// installed between the settle and the stop.
	stopped = true
	fin, err := m.stopShim(ctx, h)
	if err != nil {
		return 0, fmt.Errorf("recording run: %w", err)
	}
	if fin.Settle != nil {
		if fin.Settle.Error != "" {
			return 0, fmt.Errorf("recording run: the recorder failed: %s", fin.Settle.Error)
		}
		st.Pages = fin.Settle.Pages
	}
	log.Info("recording settled", "pages", st.Pages, "settled", st.Settled, "reason", st.Reason, "after", st.After)
	return st.Pages, nil
}
