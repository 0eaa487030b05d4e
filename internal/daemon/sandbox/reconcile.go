package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/thawvm/thaw/internal/daemon/proc"
	"github.com/thawvm/thaw/internal/daemon/reconcile"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/shim"
	"github.com/thawvm/thaw/internal/uffd"
)

// Reconcile runs one reconciler pass: it finds the shims running under the
// data directory, lets reconcile.Decide compare them with the records, and
// carries the actions out. atStart says thawd has just started: every
// creating record is then an interrupted create. Sandboxes with an
// operation in flight are left alone. It returns the plan it carried out
// and the errors of actions that failed (the rest still ran).
func (m *Manager) Reconcile(ctx context.Context, atStart bool) (reconcile.Plan, error) {
	records, err := m.opts.Store.Sandboxes()
	if err != nil {
		return reconcile.Plan{}, err
	}
	records = slices.DeleteFunc(records, func(sb store.Sandbox) bool { return m.isBusy(sb.ID) })
	live, ended, err := m.discover(ctx)
	if err != nil {
		return reconcile.Plan{}, err
	}
	grace := m.opts.CreatingGrace
	if atStart {
		grace = 0
	}
	silent := m.silence(records, live, ended, time.Now())
	plan := reconcile.Decide(reconcile.Input{Records: records, Live: live, Now: time.Now(),
		CreatingGrace: grace, MaxDestructive: m.opts.MaxActions, Silent: silent, SilentLimit: m.opts.UnresponsiveLimit})
	for _, a := range plan.Waiting {
		m.log.Warn("reconciler: shim is alive but does not answer; leaving the sandbox alone until the limit", "sandbox", a.Sandbox,
			"pid", a.Shim.PID, "why", a.Reason, "limit", m.opts.UnresponsiveLimit)
	}
	var errs []error
	for _, a := range plan.Actions {
		if m.isBusy(a.Sandbox) {
			continue
		}
		if r, ok := ended[a.Sandbox]; ok && a.Kind == reconcile.FailRecord {
			a.Reason = r
		} else if a.Kind == reconcile.FailRecord && a.Shim == nil && recordedShimAlive(records, a.Sandbox) {
			// Decide saw neither an answer nor a live process, but the
			// process the record names runs now (it was checked a
			// moment earlier): the next pass looks again.
			m.log.Warn("reconciler: shim missed discovery but is alive; leaving the sandbox alone", "sandbox", a.Sandbox)
			continue
		}
		if err := m.act(ctx, a); err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", a.Kind, a.Sandbox, err))
		} else if a.Kind != reconcile.Reattach || atStart {
			m.log.Info("reconciled", "action", a.Kind.String(), "sandbox", a.Sandbox, "reason", a.Reason)
		}
	}
	if len(plan.Deferred) > 0 {
		m.log.Warn("reconciler deferred destructive actions (cap reached)", "deferred", len(plan.Deferred), "cap", m.opts.MaxActions)
	}
	return plan, errors.Join(errs...)
}

// silence finds the running (pausing, resuming) sandboxes whose recorded
// shim is alive but was not among the shims that answered discovery, and
// returns them with the time each was first found silent: the previous
// pass's time when that pass found the same shim silent too, else now.
// What it does not find silent now is forgotten, so a shim that answers
// once starts over.
func (m *Manager) silence(records []store.Sandbox, live []reconcile.Live, ended map[string]string, now time.Time) []reconcile.Silent {
	answered := map[string]bool{}
	for _, l := range live {
		answered[l.ID] = true
	}
	var out []reconcile.Silent
	for _, r := range records {
		switch r.State {
		case store.Running, store.Pausing, store.Resuming:
		default:
			continue
		}
		if r.Shim.PID == 0 || answered[r.ID] || ended[r.ID] != "" {
			continue
		}
		if alive, err := proc.Alive(r.Shim.PID, r.Shim.StartTime); err != nil || !alive {
			continue
		}
		out = append(out, reconcile.Silent{ID: r.ID, PID: r.Shim.PID, StartTime: r.Shim.StartTime, ControlSocket: r.Shim.ControlSocket, Since: now})
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	prev := m.silent
	m.silent = map[string]reconcile.Silent{}
	for i, s := range out {
		if p, ok := prev[s.ID]; ok && p.PID == s.PID && p.StartTime == s.StartTime {
			out[i].Since = p.Since
		}
		m.silent[s.ID] = out[i]
	}
	return out
}

// recordedShimAlive reports whether the shim that sandbox id's record
// names (pid and start time) is still running.
func recordedShimAlive(records []store.Sandbox, id string) bool {
	for _, r := range records {
		if r.ID == id && r.Shim.PID != 0 {
			alive, err := proc.Alive(r.Shim.PID, r.Shim.StartTime)
			return err == nil && alive
		}
	}
	return false
}

// discover attaches to every shim answering under the sandbox directories.
// A shim whose VM is over is collected here (it only waits for that) and
// reported in ended with how the VM ended, instead of as live.
func (m *Manager) discover(ctx context.Context) (live []reconcile.Live, ended map[string]string, err error) {
	ids, err := m.opts.Layout.SandboxDirs()
	if err != nil {
		return nil, nil, err
	}
	ended = map[string]string{}
	for _, id := range ids {
		if m.isBusy(id) || strings.HasPrefix(id, store.EphemeralPrefix) {
			continue
		}
		sock := filepath.Join(m.opts.Layout.SandboxDir(id), shim.ControlSocketName)
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		h, err := shim.Attach(actx, sock)
		cancel()
		if err != nil {
			continue // no shim (paused, failed, a leftover directory)
		}
		st, err := h.Status(ctx)
		if err == nil && st.Done {
			if fin, ferr := h.Finish(ctx); ferr == nil {
				st = fin
			}
			h.Close()
			ended[h.ID] = "the VM ended: " + describe(st)
			continue
		}
		ps, perr := proc.ReadStat(h.PID)
		h.Close()
		if err != nil || perr != nil {
			continue
		}
		live = append(live, reconcile.Live{ID: h.ID, PID: h.PID, StartTime: ps.StartTime, ControlSocket: sock})
	}
	return live, ended, nil
}

// describe says how a shim's VM ended.
func describe(st shim.Status) string {
	s := string(st.State)
	if st.Reason != "" {
		s += ": " + st.Reason
	}
	if st.Exit != nil {
		s += fmt.Sprintf(" (the VMM %s)", st.Exit)
	}
	return s
}

// act carries out one reconciler action.
func (m *Manager) act(ctx context.Context, a reconcile.Action) error {
	release, err := m.claim(a.Sandbox, "reconcile")
	if err != nil {
		return nil // an operation started meanwhile; the next pass looks again
	}
	defer release()
	var sh store.Shim
	if a.Shim != nil {
		// The shim the plan names, if that process still runs (a pid
		// alone may be another process's by now).
		if st, err := proc.ReadStat(a.Shim.PID); err == nil && (a.Shim.StartTime == 0 || st.StartTime == a.Shim.StartTime) {
			sh = store.Shim{PID: a.Shim.PID, StartTime: st.StartTime, ControlSocket: a.Shim.ControlSocket}
		}
	}
	switch a.Kind {
	case reconcile.Reattach:
		return nil
	case reconcile.FailRecord:
		if err := m.stopRecorded(ctx, sh); err != nil {
			return err
		}
		if !sh.IsZero() {
			// The shim was killed, not stopped, if it was wedged: its
			// sockets stay behind. Nothing will answer on them again.
			removeSockets(m.opts.Layout.SandboxDir(a.Sandbox))
		}
		_, err := m.opts.Store.UpdateSandbox(a.Sandbox, func(s *store.Sandbox) error {
			s.State, s.Reason, s.Shim, s.UpdatedAt = store.Failed, a.Reason, store.Shim{}, time.Now()
			return nil
		})
		return err
	case reconcile.StopShim:
		if err := m.stopRecorded(ctx, sh); err != nil {
			return err
		}
		// A failed record whose shim this was no longer names it.
		_, err := m.opts.Store.UpdateSandbox(a.Sandbox, func(s *store.Sandbox) error {
			if s.State == store.Failed && s.Shim.PID == a.Shim.PID {
				s.Shim = store.Shim{}
			}
			return nil
		})
		if err != nil && !isNotFound(err) {
			return err
		}
		return nil
	case reconcile.FinishStop, reconcile.Expire:
		sb, err := m.opts.Store.UpdateSandbox(a.Sandbox, func(s *store.Sandbox) error {
			s.State, s.Reason, s.UpdatedAt = store.Stopping, "", time.Now()
			return nil
		})
		if err != nil {
			return err
		}
		return m.teardown(ctx, sb)
	}
	return fmt.Errorf("unknown action %v", a.Kind)
}

// Run runs a reconciler pass every interval until ctx ends. The pass at
// start (atStart) is the caller's: run Reconcile(ctx, true) before serving.
func (m *Manager) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := m.Reconcile(ctx, false); err != nil && ctx.Err() == nil {
			m.log.Error("reconciler pass", "err", err)
		}
	}
}

func isNotFound(err error) bool { return errdefs.IsNotFound(err) }

// removeSockets removes the unix sockets directly in dir (a sandbox
// directory whose shim is gone: its control, API, UFFD and vsock sockets),
// leaving everything else (disk, logs) for inspection until the sandbox is
// deleted.
func removeSockets(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if e.Type()&os.ModeSocket != 0 {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// PageStats returns the page-server counters of every running sandbox
// restored through UFFD, asking each shim (GET /stats); a shim that does
// not answer is left out. It is thawd's source for the page-server
// metrics.
func (m *Manager) PageStats(ctx context.Context) []uffd.Stats {
	sbs, err := m.opts.Store.Sandboxes()
	if err != nil {
		return nil
	}
	var out []uffd.Stats
	for _, sb := range sbs {
		if sb.State != store.Running || !sb.UFFD || sb.Shim.ControlSocket == "" {
			continue
		}
		c := shim.NewClient(sb.Shim.ControlSocket)
		st, err := c.Stats(ctx)
		c.Close()
		if err == nil && st.Serving {
			out = append(out, st.Stats)
		}
	}
	return out
}
