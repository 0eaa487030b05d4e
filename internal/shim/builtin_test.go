package shim_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/thawvm/thaw/guest/probe"
	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/shim"
	"github.com/thawvm/thaw/internal/testenv"
	"github.com/thawvm/thaw/internal/uffd/uffdtest"
)

// The builtin VMM's tests run the probe guest (guest/probe) for real: a
// snapshot of it taken through a builtin shim's API, restored by another
// with the Uffd backend from its page server. They are the builtin
// counterparts of the fake-VMM tests above (which drive the child-process
// path): start and ready, handshake OK and serving, a handshake that never
// comes or does not fit, a VMM failing at start, a guest shutdown, a stop
// with grace, collect, and attach after the parent died.

// probeTick is what the probe prints on every tick.
const probeTick = "probe: tick "

var (
	probeOnce sync.Once
	probeDir  string // removed by TestMain
	probeSnap builtinSnapshot
	probeErr  error
)

type builtinSnapshot struct{ vmstate, mem string }

// probeSnapshot boots the probe in a builtin shim (pages none), lets it
// tick, pauses it and takes a Full snapshot through the shim's API socket,
// once per test binary.
func probeSnapshot(t *testing.T) builtinSnapshot {
	t.Helper()
	testenv.RequireKVM(t)
	testenv.RequireUFFD(t)
	probeOnce.Do(func() { probeSnap, probeErr = takeProbeSnapshot() })
	if probeErr != nil {
		t.Fatalf("probe snapshot: %v", probeErr)
	}
	return probeSnap
}

func takeProbeSnapshot() (_ builtinSnapshot, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kernel, err := probe.Build(ctx, "")
	if err != nil {
		return builtinSnapshot{}, err
	}
	if probeDir, err = os.MkdirTemp("", "thaw-shim-probe"); err != nil {
		return builtinSnapshot{}, err
	}
	vmDir := filepath.Join(probeDir, "template")
	if err := os.Mkdir(vmDir, 0o755); err != nil {
		return builtinSnapshot{}, err
	}
	cfg := shim.Config{ID: "template", Dir: vmDir, VMM: shim.BuiltinVMM, Pages: shim.PagesNone, StopGrace: time.Second}
	h, err := shim.Start(ctx, shimBin, cfg)
	if err != nil {
		return builtinSnapshot{}, err
	}
	defer func() {
		_, serr := h.Stop(ctx, time.Second)
		if serr == nil {
			_, serr = h.Finish(ctx)
		}
		h.Close()
		if err == nil && serr != nil {
			err = fmt.Errorf("stopping the template VM: %w", serr)
		}
		if err != nil {
			err = errors.Join(err, errors.New("VMM log:\n"+readFile(cfg.VMMLog())))
		}
	}()
	c := fcapi.NewClient(h.APISocket)
	defer c.Close()
	if err := c.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: kernel, BootArgs: "probe.pages=16 probe.ticks=0 probe.spin=2000"}); err != nil {
		return builtinSnapshot{}, err
	}
	if err := c.PutMachineConfig(ctx, fcapi.MachineConfig{VcpuCount: 2, MemSizeMib: 64}); err != nil {
		return builtinSnapshot{}, err
	}
	if err := c.InstanceStart(ctx); err != nil {
		return builtinSnapshot{}, err
	}
	for strings.Count(readFile(cfg.VMMLog()), probeTick) < 2 {
		select {
		case <-ctx.Done():
			return builtinSnapshot{}, errors.New("the probe printed no two ticks")
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := c.Pause(ctx); err != nil {
		return builtinSnapshot{}, err
	}
	s := builtinSnapshot{vmstate: filepath.Join(probeDir, "vmstate"), mem: filepath.Join(probeDir, "mem")}
	if err := c.CreateSnapshot(ctx, fcapi.SnapshotCreateParams{SnapshotType: fcapi.SnapshotFull, SnapshotPath: s.vmstate, MemFilePath: s.mem}); err != nil {
		return builtinSnapshot{}, err
	}
	return s, nil
}

// newBuiltinVM is newVM for the builtin VMM restoring the probe snapshot:
// pages served with prefetch from its memory file.
func newBuiltinVM(t *testing.T, adjust func(*shim.Config)) (*vm, builtinSnapshot) {
	t.Helper()
	snap := probeSnapshot(t)
	vmDir := filepath.Join(t.TempDir(), "vm")
	if err := os.Mkdir(vmDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("shim log:\n%s\nVMM log:\n%s", readFile(filepath.Join(vmDir, shim.ShimLogName)), readFile(filepath.Join(vmDir, shim.VMMLogName)))
		}
	})
	cfg := shim.Config{
		ID: "sb-1", Dir: vmDir, VMM: shim.BuiltinVMM, VMMID: "sb-1",
		Pages: shim.PagesServe, MemFile: snap.mem, Prefetch: true,
		ReadyTimeout: 10 * time.Second, HandshakeTimeout: 20 * time.Second, StopGrace: 5 * time.Second,
	}
	if adjust != nil {
		adjust(&cfg)
	}
	return &vm{t: t, cfg: cfg, memFile: snap.mem}, snap
}

// loadProbe is what thawd does after Start: PUT /snapshot/load of the
// probe with the Uffd backend pointing at the shim's page server.
func loadProbe(ctx context.Context, h *shim.Handle, snap builtinSnapshot) error {
	c := fcapi.NewClient(h.APISocket)
	defer c.Close()
	return c.LoadSnapshot(ctx, fcapi.SnapshotLoadParams{
		SnapshotPath: snap.vmstate,
		MemBackend:   &fcapi.MemBackend{BackendType: fcapi.MemBackendUffd, BackendPath: h.UFFDSocket},
		ResumeVM:     true,
	})
}

// waitTick waits for a tick of the restored probe in the VMM log (the
// template's ticks are not in this VM's log).
func waitTick(t *testing.T, v *vm) {
	t.Helper()
	eventually(t, "a tick of the restored probe", func() (bool, error) {
		return strings.Contains(readFile(v.cfg.VMMLog()), probeTick), nil
	})
}

// TestBuiltinServeStop is the normal life of a builtin sandbox: one
// process (the VMM's pid is the shim's, and so is the handshake's peer),
// the restored guest runs on served pages, collect is refused while it
// runs, a stop ends it with code 0 (as thaw-vmm exits on SIGTERM), and
// nothing is left.
func TestBuiltinServeStop(t *testing.T) {
	ctx := testCtx(t)
	v, snap := newBuiltinVM(t, nil)
	h := v.start(ctx)
	if st, _ := h.Status(ctx); st.VMMPID != h.PID {
		t.Fatalf("VMM pid: got %d, want the shim's own (%d)", st.VMMPID, h.PID)
	}
	if err := loadProbe(ctx, h, snap); err != nil {
		t.Fatalf("snapshot load: %v", err)
	}
	verdict, err := h.Handshake(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if verdict.Err() != nil || verdict.Regions < 1 || verdict.PeerPID != h.PID {
		t.Fatalf("verdict: got %+v (err %v), want ok from the shim's own pid %d", verdict, verdict.Err(), h.PID)
	}
	waitTick(t, v)
	stats, err := h.Stats(ctx)
	if err != nil || !stats.Serving || stats.FaultPages+stats.PrefetchedPages == 0 {
		t.Errorf("stats: got %+v, %v; want serving with pages installed", stats, err)
	}
	var apiErr *shim.APIError
	if _, err := h.Collect(ctx); !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusConflict {
		t.Errorf("collect while running: got %v, want 409", err)
	}
	st, err := h.Stop(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != shim.StateVMMExited || !st.Stopped || st.Exit == nil || st.Exit.Code != 0 || st.Exit.Signal != 0 {
		t.Errorf("after stop: got state %s, stopped %t, exit %v; want vmm-exited, stopped, exited with code 0", st.State, st.Stopped, st.Exit)
	}
	v.finish(ctx, h)
}

// TestBuiltinGuestShutdown: Ctrl+Alt+Del makes the restored probe reset
// through the i8042, which ends the VM with code 0.
func TestBuiltinGuestShutdown(t *testing.T) {
	ctx := testCtx(t)
	v, snap := newBuiltinVM(t, nil)
	h := v.start(ctx)
	if err := loadProbe(ctx, h, snap); err != nil {
		t.Fatalf("snapshot load: %v", err)
	}
	waitTick(t, v)
	c := fcapi.NewClient(h.APISocket)
	defer c.Close()
	if err := c.SendCtrlAltDel(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := h.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != shim.StateVMMExited || st.Stopped || st.Exit == nil || st.Exit.Code != 0 || st.Exit.Signal != 0 {
		t.Errorf("after the guest's reset: got state %s, stopped %t, exit %v; want vmm-exited with code 0, not stopped", st.State, st.Stopped, st.Exit)
	}
	if log := readFile(v.cfg.VMMLog()); !strings.Contains(log, "guest reset through the i8042") {
		t.Errorf("VMM log: want the machine's exit reason, got:\n%s", log)
	}
	v.finish(ctx, h)
}

// TestBuiltinHandshakeNeverArrives: without a snapshot load no handshake
// comes; the VM fails at the deadline with the reason, and the builtin
// VMM is killed.
func TestBuiltinHandshakeNeverArrives(t *testing.T) {
	ctx := testCtx(t)
	v, _ := newBuiltinVM(t, func(c *shim.Config) { c.HandshakeTimeout = time.Second })
	h := v.start(ctx)
	st, err := h.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != shim.StateFailed || !strings.Contains(st.Reason, "no UFFD handshake") || st.Exit == nil || st.Exit.Signal != int(syscall.SIGKILL) {
		t.Errorf("status: got %s (%q), exit %v; want failed for the missing handshake, VMM killed", st.State, st.Reason, st.Exit)
	}
	if st.Handshake.State != shim.VerdictFailed {
		t.Errorf("verdict: got %+v, want failed", st.Handshake)
	}
	v.finish(ctx, h)
}

// TestBuiltinHandshakeRejected: the page server serves a memory file half
// the guest's size, so the handshake does not fit it: the verdict fails
// naming the region, and the VM (its load in flight) is killed.
func TestBuiltinHandshakeRejected(t *testing.T) {
	ctx := testCtx(t)
	snap := probeSnapshot(t)
	half := filepath.Join(t.TempDir(), "half-mem")
	copyHalf(t, snap.mem, half)
	v, _ := newBuiltinVM(t, func(c *shim.Config) { c.MemFile = half })
	h := v.start(ctx)
	if err := loadProbe(ctx, h, snap); err == nil {
		t.Error("snapshot load: got success, want the load to fail with the VM killed")
	} else {
		t.Logf("snapshot load: %v", err)
	}
	verdict, err := h.Handshake(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if verdict.State != shim.VerdictFailed || !strings.Contains(verdict.Reason, "region") {
		t.Errorf("verdict: got %+v, want failed naming the region that does not fit", verdict)
	}
	st, err := h.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != shim.StateFailed || !strings.Contains(st.Reason, "region") || st.Exit == nil || st.Exit.Signal != int(syscall.SIGKILL) {
		t.Errorf("status: got %s (%q), exit %v; want failed with the handshake's reason, VMM killed", st.State, st.Reason, st.Exit)
	}
	v.finish(ctx, h)
}

func copyHalf(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil {
		t.Fatal(err)
	}
	dst, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(dst, src, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestBuiltinStartFails: a builtin VMM that cannot start (here a bad
// THAW_VMM_XSAVE, read at each start) makes Start return a StartError
// naming it, and leaves nothing behind.
func TestBuiltinStartFails(t *testing.T) {
	ctx := testCtx(t)
	v, _ := newBuiltinVM(t, nil)
	t.Setenv("THAW_VMM_XSAVE", "maybe") // the shim inherits it
	_, err := shim.Start(ctx, shimBin, v.cfg)
	var se *shim.StartError
	if !errors.As(err, &se) {
		t.Fatalf("Start: got %v, want a *StartError", err)
	}
	if st := se.Status; st.State != shim.StateFailed || !strings.Contains(st.Reason, "THAW_VMM_XSAVE") || st.Exit != nil {
		t.Errorf("status: got %s (%q), exit %v; want failed naming THAW_VMM_XSAVE, no exit", st.State, st.Reason, st.Exit)
	}
	v.checkClean(se.Status)
}

// TestBuiltinAttachAfterParentKill: the builtin shim outlives the process
// that started it (thawd killed), Attach finds it, and the VM it runs is
// loaded, serves, stops and is collected as usual.
func TestBuiltinAttachAfterParentKill(t *testing.T) {
	ctx := testCtx(t)
	v, snap := newBuiltinVM(t, nil)
	pid := launchDetached(t, v.cfg)

	h, err := shim.Attach(ctx, v.cfg.ControlSocket())
	if err != nil {
		t.Fatalf("Attach after the parent died: %v", err)
	}
	defer h.Close()
	st, err := h.Status(ctx)
	if err != nil || st.State != shim.StateRunning || h.PID != pid || st.VMMPID != pid {
		t.Fatalf("status after the parent died: got %+v, %v; want running, shim and VMM pid %d", st, err, pid)
	}
	if err := loadProbe(ctx, h, snap); err != nil {
		t.Fatalf("snapshot load: %v", err)
	}
	if verdict, err := h.Handshake(ctx); err != nil || verdict.Err() != nil {
		t.Fatalf("verdict: got %+v, %v; want ok", verdict, err)
	}
	waitTick(t, v)
	if _, err := h.Stop(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	v.finish(ctx, h)
}

// TestBuiltinShimTerminated: SIGTERM to a builtin shim whose restored
// guest runs stops the VM (code 0, as thaw-vmm on SIGTERM), writes the
// final status file and leaves no socket behind.
func TestBuiltinShimTerminated(t *testing.T) {
	ctx := testCtx(t)
	v, snap := newBuiltinVM(t, nil)
	h := v.start(ctx)
	if err := loadProbe(ctx, h, snap); err != nil {
		t.Fatalf("snapshot load: %v", err)
	}
	waitTick(t, v)
	if err := syscall.Kill(h.PID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitExit(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := shim.ReadStatusFile(v.cfg.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != shim.StateVMMExited || !st.Stopped || !st.Done || st.Collected || st.Exit == nil || st.Exit.Code != 0 || st.Exit.Signal != 0 {
		t.Errorf("status file: got %+v, want vmm-exited, stopped, done, not collected, exit code 0", st)
	}
	for _, name := range []string{shim.ControlSocketName, shim.APISocketName, shim.UFFDSocketName} {
		if _, err := os.Lstat(filepath.Join(v.cfg.Dir, name)); err == nil {
			t.Errorf("%s left behind", name)
		}
	}
}

// TestBuiltinStopGraceThenKill: a builtin VM whose vCPU waits for a page
// that will never come (its page server, here one in the test process,
// died after the first page) does not stop on the stop's request; after
// the grace the shim kills it, and the kill frees the vCPU. On kvm_pvm a
// signal does not get a vCPU out of such a fault, so there the stop must
// end by the kill; with hardware KVM the stop's kick may suffice.
func TestBuiltinStopGraceThenKill(t *testing.T) {
	ctx := testCtx(t)
	v, snap := newBuiltinVM(t, func(c *shim.Config) { c.Pages, c.MemFile, c.Prefetch = shim.PagesNone, "", false })
	sock := filepath.Join(t.TempDir(), "uffd.sock")
	served := uffdtest.ServeFirstPageOnly(t, sock, snap.mem)

	h := v.start(ctx)
	c := fcapi.NewClient(h.APISocket)
	defer c.Close()
	if err := c.LoadSnapshot(ctx, fcapi.SnapshotLoadParams{SnapshotPath: snap.vmstate,
		MemBackend: &fcapi.MemBackend{BackendType: fcapi.MemBackendUffd, BackendPath: sock}, ResumeVM: true}); err != nil {
		t.Fatalf("snapshot load: %v", err)
	}
	if err := <-served; !errors.Is(err, uffdtest.ErrBroken) {
		t.Fatalf("page server: got %v, want it broken by the test", err)
	}
	const grace = time.Second
	start := time.Now()
	st, err := h.Stop(ctx, grace)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("stop took %v: %s", took, st.Exit)
	if st.State != shim.StateVMMExited || !st.Stopped || st.Exit == nil {
		t.Fatalf("after stop: got state %s, stopped %t, exit %v; want vmm-exited and stopped", st.State, st.Stopped, st.Exit)
	}
	killed := st.Exit.Signal == int(syscall.SIGKILL)
	if testenv.KVMIsPVM() && (!killed || took < grace) {
		t.Errorf("on kvm_pvm: got exit %v after %v, want the kill after the %v grace", st.Exit, took, grace)
	}
	if !killed && st.Exit.Code != 0 {
		t.Errorf("exit: got %v, want code 0 (stopped) or killed by SIGKILL", st.Exit)
	}
	v.finish(ctx, h)
}
