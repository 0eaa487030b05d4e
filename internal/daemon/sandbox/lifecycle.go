package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/thawvm/thaw/internal/daemon/proc"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/shim"
)

// Delete tears a sandbox down: stop its shim (and so its VMM), remove its
// directory, delete its record. A sandbox being created, paused or resumed
// is refused; one already being deleted too. If the teardown fails the
// record becomes failed with the reason, and a later Delete (or the
// reconciler) retries it.
func (m *Manager) Delete(ctx context.Context, id string) error {
	if err := store.ValidateID("sandbox id", id); err != nil {
		return err
	}
	release, err := m.claim(id, "delete")
	if err != nil {
		return err
	}
	defer release()
	sb, err := m.opts.Store.UpdateSandbox(id, func(s *store.Sandbox) error {
		switch s.State {
		case store.Running, store.Paused, store.Failed, store.Stopping:
		default:
			return errdefs.FailedPrecondition("sandbox %q is %s; delete it when that has finished", id, s.State)
		}
		s.State, s.Reason, s.UpdatedAt = store.Stopping, "", time.Now()
		return nil
	})
	if err != nil {
		return fmt.Errorf("deleting sandbox %q: %w", id, err)
	}
	return m.teardown(ctx, sb)
}

// teardown finishes the deletion of a stopping record.
func (m *Manager) teardown(ctx context.Context, sb store.Sandbox) error {
	err := m.stopRecorded(ctx, sb.Shim)
	if err == nil {
		err = m.opts.Layout.RemoveSandboxDir(sb.ID)
	}
	if err == nil {
		err = m.opts.Store.DeleteSandbox(sb.ID)
	}
	if err != nil {
		reason := fmt.Sprintf("teardown failed: %v", err)
		if _, uerr := m.opts.Store.UpdateSandbox(sb.ID, func(s *store.Sandbox) error {
			s.State, s.Reason, s.UpdatedAt = store.Failed, reason, time.Now()
			return nil
		}); uerr != nil {
			err = errors.Join(err, uerr)
		}
		return fmt.Errorf("deleting sandbox %q: %w", sb.ID, err)
	}
	m.log.Info("sandbox deleted", "sandbox", sb.ID)
	return nil
}

// stopRecorded stops the shim a record names, through its control socket,
// or by SIGKILL if the socket does not answer but the process (same pid and
// start time) lives. No shim recorded, or one already gone, is fine.
func (m *Manager) stopRecorded(ctx context.Context, sh store.Shim) error {
	if sh.IsZero() {
		return nil
	}
	if alive, err := proc.Alive(sh.PID, sh.StartTime); err == nil && !alive {
		return nil
	}
	h, err := attach(ctx, sh)
	if err != nil {
		m.log.Warn("shim does not answer; killing it", "pid", sh.PID, "err", err)
		return killShim(sh)
	}
	_, err = m.stopShim(ctx, h)
	return err
}

// Pause takes a Full snapshot of a running sandbox into its directory and
// stops its VMM and shim; the sandbox keeps its disk and costs no memory
// until Resume. If the snapshot fails the VM is resumed and stays running.
func (m *Manager) Pause(ctx context.Context, id string) (store.Sandbox, error) {
	if err := store.ValidateID("sandbox id", id); err != nil {
		return store.Sandbox{}, err
	}
	release, err := m.claim(id, "pause")
	if err != nil {
		return store.Sandbox{}, err
	}
	defer release()
	sb, err := m.opts.Store.UpdateSandbox(id, func(s *store.Sandbox) error {
		if s.State != store.Running {
			return errdefs.FailedPrecondition("sandbox %q is %s: only a running sandbox can be paused", id, s.State)
		}
		s.State, s.UpdatedAt = store.Pausing, time.Now()
		return nil
	})
	if err != nil {
		return store.Sandbox{}, fmt.Errorf("pausing sandbox %q: %w", id, err)
	}
	back := func(cause error) (store.Sandbox, error) {
		_, uerr := m.opts.Store.UpdateSandbox(id, func(s *store.Sandbox) error {
			s.State, s.UpdatedAt = store.Running, time.Now()
			return nil
		})
		return store.Sandbox{}, fmt.Errorf("pausing sandbox %q: %w", id, errors.Join(cause, uerr))
	}
	h, err := attach(ctx, sb.Shim)
	if err != nil {
		return back(err)
	}
	vc := fcapi.NewClient(h.APISocket)
	defer vc.Close()
	statePath, memPath := filepath.Join(sb.Dir, PauseStateName), filepath.Join(sb.Dir, PauseMemName)
	if err := vc.Pause(ctx); err != nil {
		h.Close()
		return back(fmt.Errorf("PATCH /vm Paused: %w", err))
	}
	if err := vc.CreateSnapshot(ctx, fcapi.SnapshotCreateParams{SnapshotType: fcapi.SnapshotFull, SnapshotPath: statePath, MemFilePath: memPath}); err != nil {
		os.Remove(statePath)
		os.Remove(memPath)
		rerr := vc.Resume(context.WithoutCancel(ctx))
		h.Close()
		return back(errors.Join(fmt.Errorf("PUT /snapshot/create: %w", err), rerr))
	}
	if _, err := m.stopShim(ctx, h); err != nil {
		return m.fail(id, fmt.Sprintf("pause: the snapshot is written but stopping the shim failed: %v", err))
	}
	sb, err = m.opts.Store.UpdateSandbox(id, func(s *store.Sandbox) error {
		s.State, s.Shim, s.UpdatedAt = store.Paused, store.Shim{}, time.Now()
		return nil
	})
	if err != nil {
		return store.Sandbox{}, fmt.Errorf("pausing sandbox %q: %w", id, err)
	}
	m.log.Info("sandbox paused", "sandbox", id)
	return sb, nil
}

// Resume restores a paused sandbox in place from its own snapshot (File
// backend: the pause snapshot is the sandbox's, no page server serves it).
// If the restore fails the sandbox stays paused with its snapshot intact.
func (m *Manager) Resume(ctx context.Context, id string) (store.Sandbox, error) {
	if err := store.ValidateID("sandbox id", id); err != nil {
		return store.Sandbox{}, err
	}
	release, err := m.claim(id, "resume")
	if err != nil {
		return store.Sandbox{}, err
	}
	defer release()
	sb, err := m.opts.Store.Sandbox(id)
	if err != nil {
		return store.Sandbox{}, err
	}
	if sb.State != store.Paused {
		return store.Sandbox{}, errdefs.FailedPrecondition("sandbox %q is %s: only a paused sandbox can be resumed", id, sb.State)
	}
	tpl, err := m.opts.Store.Template(sb.Template)
	if err != nil {
		return store.Sandbox{}, err
	}
	build := tpl.BuildByID(sb.Build)
	h, err := shim.Start(ctx, m.opts.Shim, shim.Config{ID: id, Dir: sb.Dir, VMM: m.opts.VMM, Procs: m.opts.ShimProcs, Pages: shim.PagesNone, StopGrace: m.opts.StopGrace})
	if err != nil {
		return store.Sandbox{}, fmt.Errorf("resuming sandbox %q: starting the shim: %w", id, err)
	}
	undo := func(cause error) (store.Sandbox, error) {
		_, serr := m.stopShim(context.WithoutCancel(ctx), h)
		_, uerr := m.opts.Store.UpdateSandbox(id, func(s *store.Sandbox) error {
			s.State, s.Shim, s.UpdatedAt = store.Paused, store.Shim{}, time.Now()
			return nil
		})
		return store.Sandbox{}, fmt.Errorf("resuming sandbox %q: %w", id, errors.Join(cause, serr, uerr))
	}
	st, err := proc.ReadStat(h.PID)
	if err != nil {
		return undo(err)
	}
	rec := store.Shim{PID: h.PID, StartTime: st.StartTime, ControlSocket: h.SocketPath()}
	if _, err := m.opts.Store.UpdateSandbox(id, func(s *store.Sandbox) error {
		s.State, s.Shim, s.UpdatedAt = store.Resuming, rec, time.Now()
		return nil
	}); err != nil {
		return undo(err)
	}
	p := fcapi.SnapshotLoadParams{SnapshotPath: filepath.Join(sb.Dir, PauseStateName), ResumeVM: true,
		MemBackend: &fcapi.MemBackend{BackendType: fcapi.MemBackendFile, BackendPath: filepath.Join(sb.Dir, PauseMemName)}}
	if build != nil && agentReady(build.Ready) {
		p.VsockOverride = &fcapi.VsockOverride{UDSPath: filepath.Join(sb.Dir, VsockName)}
	}
	lctx, cancel := context.WithTimeout(ctx, m.opts.LoadTimeout)
	err = loadSnapshot(lctx, h, p, m.opts.LoadTimeout)
	cancel()
	if err != nil {
		return undo(err)
	}
	if build != nil && agentReady(build.Ready) {
		// The guest slept through the pause: its clock is behind and its
		// randomness is what it was. The agent's init fixes both.
		if err := waitReady(ctx, h, build.Ready, m.opts.ReadyTimeout, id, nil); err != nil {
			return undo(err)
		}
	}
	h.Close()
	sb, err = m.opts.Store.UpdateSandbox(id, func(s *store.Sandbox) error {
		s.State, s.UpdatedAt = store.Running, time.Now()
		return nil
	})
	if err != nil {
		return store.Sandbox{}, fmt.Errorf("resuming sandbox %q: %w", id, err)
	}
	// The snapshot has served its purpose; the running VM maps the memory
	// file privately, so removing its name frees nothing it still needs
	// but the space once the VM ends.
	os.Remove(filepath.Join(sb.Dir, PauseStateName))
	m.log.Info("sandbox resumed", "sandbox", id)
	return sb, nil
}

// fail marks a sandbox failed with reason and returns the reason as an error.
func (m *Manager) fail(id, reason string) (store.Sandbox, error) {
	_, err := m.opts.Store.UpdateSandbox(id, func(s *store.Sandbox) error {
		s.State, s.Reason, s.UpdatedAt = store.Failed, reason, time.Now()
		return nil
	})
	return store.Sandbox{}, errors.Join(fmt.Errorf("sandbox %q: %s", id, reason), err)
}
