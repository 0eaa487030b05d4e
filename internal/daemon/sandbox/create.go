package sandbox

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/thawvm/thaw/internal/agentapi"
	"github.com/thawvm/thaw/internal/daemon/disk"
	"github.com/thawvm/thaw/internal/daemon/phases"
	"github.com/thawvm/thaw/internal/daemon/proc"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/shim"
)

// Files a sandbox directory holds besides the shim's sockets and logs.
const (
	// DiskName is the sandbox's copy-on-write clone of the build's rootfs.
	// A template's snapshot records its drive by this relative name; the
	// VMM runs with the sandbox directory as its working directory, so
	// each restore opens its own clone (Firecracker's jailer does the same
	// with a chroot).
	DiskName = "rootfs.ext4"
	// VsockName is the host side of the sandbox's vsock device (the
	// snapshot load's vsock_override points it here).
	VsockName = "vsock.sock"
	// PauseStateName and PauseMemName hold a paused sandbox's snapshot.
	PauseStateName = "pause.vmstate"
	PauseMemName   = "pause.mem"
)

// CreateRequest is what a create needs.
type CreateRequest struct {
	// ID is the new sandbox's id; empty picks one.
	ID       string
	Template string
	// TTL, when positive, deletes the sandbox that long after its create.
	TTL time.Duration
	// Env is passed to the agent's init (agent templates only).
	Env []string
}

// Create restores a new sandbox from the template's current build and
// returns its record once it is ready. On any failure everything the create
// made is removed again (shim, VMM, directory, record) and the error says
// which phase failed; its kind is the cause's (unknown template: not found,
// full disk: resource exhausted, load past its bound: deadline exceeded).
func (m *Manager) Create(ctx context.Context, req CreateRequest) (store.Sandbox, error) {
	if req.ID == "" {
		req.ID = newID()
	}
	if err := store.ValidateID("sandbox id", req.ID); err != nil {
		return store.Sandbox{}, err
	}
	if err := store.ValidateID("template name", req.Template); err != nil {
		return store.Sandbox{}, err
	}
	if req.TTL < 0 {
		return store.Sandbox{}, errdefs.InvalidArgument("ttl %v is negative: give a positive duration, or none", req.TTL)
	}
	release, err := m.claim(req.ID, "create")
	if err != nil {
		return store.Sandbox{}, err
	}
	defer release()
	tpl, err := m.opts.Store.Template(req.Template)
	if err != nil {
		return store.Sandbox{}, err
	}
	build := tpl.BuildByID(tpl.Current)
	if build == nil {
		return store.Sandbox{}, errdefs.FailedPrecondition("template %q has no ready build yet", req.Template)
	}
	uffdOn := m.opts.Settings.UFFD()
	backend := "file"
	if uffdOn {
		backend = "uffd"
	}
	log := m.log.With("sandbox", req.ID, "template", req.Template, "build", build.ID)
	c := &creation{m: m, req: req, build: *build, uffd: uffdOn, run: phases.New(0)}
	sb, err := c.do(ctx)
	if err != nil {
		if rerr := c.run.Rollback(ctx); rerr != nil {
			// Leftovers the reconciler will find (a shim with no record,
			// a directory) are logged; the caller gets the create's error.
			log.Error("rolling back a failed create", "err", rerr)
		}
		log.Warn("create failed", "err", err, "phases", c.run.Phases())
	} else {
		log.Info("sandbox created", "backend", backend, "phases", c.run.Phases())
	}
	if m.opts.Observer != nil {
		m.opts.Observer.ObserveCreate(backend, c.run.Phases(), err)
	}
	if err != nil {
		return store.Sandbox{}, fmt.Errorf("creating sandbox %q: %w", req.ID, err)
	}
	return sb, nil
}

// creation is one create in progress.
type creation struct {
	m     *Manager
	req   CreateRequest
	build store.Build
	uffd  bool
	run   *phases.Run

	dir    string
	handle *shim.Handle
}

func (c *creation) do(ctx context.Context) (store.Sandbox, error) {
	m, r := c.m, c.run
	// The slot bounds the restore; it is given back when the create ends
	// either way.
	var slot interface{ Release() }
	err := r.Do(ctx, "slot", func(ctx context.Context) (phases.Undo, error) {
		s, err := m.opts.Settings.Slots().Acquire(ctx)
		if err != nil {
			return nil, err
		}
		slot = s
		return nil, nil
	})
	if err != nil {
		return store.Sandbox{}, err
	}
	defer slot.Release()
	now := time.Now()
	sb := store.Sandbox{ID: c.req.ID, Template: c.req.Template, Build: c.build.ID, State: store.Creating,
		Dir: m.opts.Layout.SandboxDir(c.req.ID), UFFD: c.uffd, CreatedAt: now, UpdatedAt: now}
	if c.req.TTL > 0 {
		sb.TTL, sb.ExpiresAt = c.req.TTL, now.Add(c.req.TTL)
	}
	steps := []struct {
		name string
		fn   func(ctx context.Context) (phases.Undo, error)
	}{
		{"record", func(context.Context) (phases.Undo, error) {
			if err := m.opts.Store.CreateSandbox(sb); err != nil {
				return nil, err
			}
			return func(context.Context) error { return m.opts.Store.DeleteSandbox(sb.ID) }, nil
		}},
		{"dir", func(context.Context) (phases.Undo, error) {
			dir, err := m.opts.Layout.CreateSandboxDir(sb.ID)
			if err != nil {
				return nil, err
			}
			c.dir = dir
			return func(context.Context) error { return m.opts.Layout.RemoveSandboxDir(sb.ID) }, nil
		}},
		{"disk", func(context.Context) (phases.Undo, error) {
			return nil, disk.Clone(filepath.Join(c.build.Dir, c.build.Artifacts.Rootfs), filepath.Join(c.dir, DiskName))
		}},
		{"shim", c.startShim},
		{"load", c.load},
		{"handshake", c.handshake},
		{"ready", c.ready},
	}
	for _, s := range steps {
		if err := r.Do(ctx, s.name, s.fn); err != nil {
			return store.Sandbox{}, err
		}
	}
	st, err := proc.ReadStat(c.handle.PID)
	if err != nil {
		return store.Sandbox{}, fmt.Errorf("reading the shim's start time: %w", err)
	}
	timings := r.Phases()
	sb, err = m.opts.Store.UpdateSandbox(sb.ID, func(s *store.Sandbox) error {
		s.State = store.Running
		s.Shim = store.Shim{PID: c.handle.PID, StartTime: st.StartTime, ControlSocket: c.handle.SocketPath()}
		s.Create = timings
		s.UpdatedAt = time.Now()
		return nil
	})
	if err != nil {
		return store.Sandbox{}, fmt.Errorf("persisting: %w", err)
	}
	r.Commit()
	c.handle.Close()
	return sb, nil
}

func (c *creation) startShim(ctx context.Context) (phases.Undo, error) {
	m := c.m
	cfg := shim.Config{ID: c.req.ID, Dir: c.dir, VMM: m.opts.VMM, Procs: m.opts.ShimProcs, Pages: shim.PagesNone,
		StopGrace: m.opts.StopGrace, HandshakeTimeout: m.opts.LoadTimeout + m.opts.ReadyTimeout}
	if c.uffd {
		cfg.Pages = shim.PagesServe
		cfg.MemFile = filepath.Join(c.build.Dir, c.build.Artifacts.Memory)
		cfg.Prefetch = m.opts.Prefetch
		// The access log is a prefetch order: with prefetch off (a
		// thawd restarted with THAW_UFFD_PREFETCH off, builds recorded
		// before) the shim must not get it.
		if cfg.Prefetch && c.build.Artifacts.AccessLog != "" {
			cfg.AccessLog = filepath.Join(c.build.Dir, c.build.Artifacts.AccessLog)
		}
		if cfg.Prefetch {
			cfg.PrefetchRate = m.opts.PrefetchRate
		}
	}
	h, err := shim.Start(ctx, m.opts.Shim, cfg)
	if err != nil {
		var se *shim.StartError
		if errors.As(err, &se) {
			return nil, errdefs.Unavailable("%v", err)
		}
		return nil, err
	}
	c.handle = h
	return func(ctx context.Context) error {
		_, err := m.stopShim(ctx, h)
		return err
	}, nil
}

func (c *creation) load(ctx context.Context) (phases.Undo, error) {
	ctx, cancel := context.WithTimeout(ctx, c.m.opts.LoadTimeout)
	defer cancel()
	p := fcapi.SnapshotLoadParams{SnapshotPath: filepath.Join(c.build.Dir, c.build.Artifacts.VMState), ResumeVM: true,
		MemBackend: &fcapi.MemBackend{BackendType: fcapi.MemBackendFile, BackendPath: filepath.Join(c.build.Dir, c.build.Artifacts.Memory)}}
	if c.uffd {
		p.MemBackend = &fcapi.MemBackend{BackendType: fcapi.MemBackendUffd, BackendPath: c.handle.UFFDSocket}
	}
	if agentReady(c.build.Ready) {
		p.VsockOverride = &fcapi.VsockOverride{UDSPath: filepath.Join(c.dir, VsockName)}
	}
	if c.build.RootDrive != "" {
		// The snapshot names the template's disk by an absolute path:
		// keep the VM paused until the drive is the sandbox's own.
		p.ResumeVM = false
	}
	err := loadSnapshot(ctx, c.handle, p, c.m.opts.LoadTimeout)
	if err == nil && c.build.RootDrive != "" {
		err = swapRootDrive(ctx, c.handle, c.build.RootDrive, filepath.Join(c.dir, DiskName), c.m.opts.LoadTimeout)
	}
	if err != nil && c.uffd {
		// A page server that refused the handshake kills the VMM, so
		// the load fails too; the shim knows why.
		if st, serr := c.handle.Status(context.WithoutCancel(ctx)); serr == nil && st.State == shim.StateFailed {
			var apiErr *fcapi.APIError
			if !errors.As(err, &apiErr) {
				err = errors.New("the VMM ended during the load")
			}
			err = fmt.Errorf("the page server failed, so the shim stopped the VMM: %s (%v)", st.Reason, err)
		}
	}
	return nil, err
}

// swapRootDrive points the loaded, paused VM's drive driveID at path
// (Firecracker's PATCH /drives/{drive_id}) and resumes it.
func swapRootDrive(ctx context.Context, h *shim.Handle, driveID, path string, bound time.Duration) error {
	vc := fcapi.NewClient(h.APISocket)
	defer vc.Close()
	if err := vc.PatchDrive(ctx, fcapi.PartialDrive{DriveID: driveID, PathOnHost: path}); err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return errdefs.DeadlineExceeded("PATCH /drives/%s did not answer within %v", driveID, bound)
		}
		return fmt.Errorf("pointing drive %q at the sandbox's disk: %w%s", driveID, err, vmmTail(h.Dir))
	}
	if err := vc.Resume(ctx); err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return errdefs.DeadlineExceeded("PATCH /vm Resumed did not answer within %v", bound)
		}
		return fmt.Errorf("resuming after the drive swap: %w%s", err, vmmTail(h.Dir))
	}
	return nil
}

// loadSnapshot sends PUT /snapshot/load to the VMM under h. A load past
// its bound is "deadline exceeded"; a refused one names the VMM's words and
// the end of its output.
func loadSnapshot(ctx context.Context, h *shim.Handle, p fcapi.SnapshotLoadParams, bound time.Duration) error {
	vc := fcapi.NewClient(h.APISocket)
	defer vc.Close()
	err := vc.LoadSnapshot(ctx, p)
	switch {
	case err == nil:
		return nil
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return errdefs.DeadlineExceeded("PUT /snapshot/load did not answer within %v", bound)
	}
	var apiErr *fcapi.APIError
	if errors.As(err, &apiErr) {
		return fmt.Errorf("the VMM refused the snapshot: %w%s", err, vmmTail(h.Dir))
	}
	return fmt.Errorf("PUT /snapshot/load: %w%s", err, vmmTail(h.Dir))
}

// vmmTail returns "; VMM output ends: ..." for error messages, or "".
func vmmTail(dir string) string {
	data, err := os.ReadFile(filepath.Join(dir, shim.VMMLogName))
	if err != nil || len(bytes.TrimSpace(data)) == 0 {
		return ""
	}
	if len(data) > 512 {
		data = data[len(data)-512:]
	}
	return fmt.Sprintf("; VMM output ends: %q", bytes.TrimSpace(data))
}

func (c *creation) handshake(ctx context.Context) (phases.Undo, error) {
	if !c.uffd {
		return nil, nil
	}
	bound := c.m.opts.ReadyTimeout
	hctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	v, err := c.handle.Handshake(hctx)
	if err != nil {
		if ctx.Err() == nil && errors.Is(hctx.Err(), context.DeadlineExceeded) {
			// A VMM sends the handshake during its load, and the verdict
			// follows within milliseconds: still none means none came.
			return nil, errdefs.DeadlineExceeded("the VMM's snapshot load succeeded, but no UFFD handshake reached the page server within %v after it: does the VMM support the Uffd backend? (%v)", bound, err)
		}
		return nil, errdefs.Mark(fmt.Errorf("asking the shim for the handshake verdict: %w", err), errdefs.ErrUnavailable)
	}
	if v.State != shim.VerdictOK {
		// The VMM's load succeeded, but its memory is not being served.
		return nil, fmt.Errorf("page server handshake %s: %s", v.State, v.Reason)
	}
	return nil, nil
}

func (c *creation) ready(ctx context.Context) (phases.Undo, error) {
	return nil, waitReady(ctx, c.handle, c.build.Ready, c.m.opts.ReadyTimeout, c.req.ID, c.req.Env)
}

// waitReady runs a restored VM's ready check (bounded by bound): the serial
// marker, or the agent's health followed by its post-restore init
// (hostname, env, wall clock, fresh entropy).
func waitReady(ctx context.Context, h *shim.Handle, r store.ReadyCheck, bound time.Duration, hostname string, env []string) error {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	if !agentReady(r) {
		return waitSerial(ctx, h, r.Marker, bound)
	}
	ctx, release := endWithVM(ctx, h, "its agent answered")
	defer release()
	ac := agentapi.NewClient(agentapi.VsockDialer(filepath.Join(h.Dir, VsockName), agentapi.DefaultVsockPort))
	defer ac.Close()
	if _, err := ac.WaitReady(ctx, 20*time.Millisecond); err != nil {
		return vmEndedOr(ctx, timeoutKind(ctx, fmt.Errorf("agent health: %w", err)))
	}
	entropy := make([]byte, 64)
	rand.Read(entropy)
	if _, err := ac.Init(ctx, agentapi.InitRequest{Env: env, Hostname: hostname, Time: time.Now(), Entropy: entropy}); err != nil {
		return vmEndedOr(ctx, timeoutKind(ctx, fmt.Errorf("agent init: %w", err)))
	}
	return nil
}

// errVMEnded marks the cause endWithVM cancels with.
var errVMEnded = errors.New("the VM ended")

// endWithVM returns ctx cancelled, with a cause that says how the VM ended
// and what its VMM printed last, as soon as the shim reports the VMM gone:
// a guest that dies during a ready check (a triple fault, a VMM that
// exits) then fails it at once instead of when the check's bound runs
// out. Every ready check (serial or agent, create or build) runs under it.
// release stops the watch and waits for it.
func endWithVM(ctx context.Context, h *shim.Handle, before string) (_ context.Context, release func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if st, err := h.Wait(ctx); err == nil {
			cancel(fmt.Errorf("%w before %s (%s)%s", errVMEnded, before, describe(st), vmmTail(h.Dir)))
		}
	}()
	return ctx, func() { cancel(nil); <-done }
}

// vmEndedOr returns endWithVM's cause when the VM's end cancelled ctx, and
// err otherwise.
func vmEndedOr(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); errors.Is(cause, errVMEnded) {
		return cause
	}
	return err
}

func agentReady(r store.ReadyCheck) bool { return r.Kind != store.ReadySerial }

func timeoutKind(ctx context.Context, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return errdefs.Mark(err, errdefs.ErrDeadlineExceeded)
	}
	return err
}

// waitSerial waits until marker appears in the VMM's output, the VM ends
// or ctx ends.
func waitSerial(ctx context.Context, h *shim.Handle, marker string, bound time.Duration) error {
	ctx, release := endWithVM(ctx, h, fmt.Sprintf("%q appeared on its serial console", marker))
	defer release()
	path := filepath.Join(h.Dir, shim.VMMLogName)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		data, err := os.ReadFile(path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("reading the serial log: %w", err)
		}
		if bytes.Contains(data, []byte(marker)) {
			return nil
		}
		select {
		case <-ctx.Done():
			if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return context.Cause(ctx)
			}
			return errdefs.DeadlineExceeded("ready check: %q did not appear on the serial console within %v%s", marker, bound, vmmTail(h.Dir))
		case <-t.C:
		}
	}
}
