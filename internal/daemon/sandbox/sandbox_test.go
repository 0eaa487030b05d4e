package sandbox_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/daemon/config"
	"github.com/thawvm/thaw/internal/daemon/disk/disktest"
	"github.com/thawvm/thaw/internal/daemon/layout"
	"github.com/thawvm/thaw/internal/daemon/live"
	"github.com/thawvm/thaw/internal/daemon/proc"
	"github.com/thawvm/thaw/internal/daemon/reconcile"
	"github.com/thawvm/thaw/internal/daemon/sandbox"
	"github.com/thawvm/thaw/internal/daemon/sandbox/sandboxtest"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/daemon/template"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/shim"
	"github.com/thawvm/thaw/internal/testenv"
)

func TestMain(m *testing.M) {
	sandboxtest.MaybeRunFirecrackerLikeVMM()
	code := m.Run()
	sandboxtest.Cleanup()
	if snapDir != "" {
		os.RemoveAll(snapDir)
	}
	os.Exit(code)
}

var (
	snapOnce sync.Once
	snapDir  string
	snap     sandboxtest.Snapshot
)

// probeSnapshot takes the probe snapshot once per test binary.
func probeSnapshot(t testing.TB) sandboxtest.Snapshot {
	t.Helper()
	testenv.RequireKVM(t)
	testenv.RequireUFFD(t)
	testenv.RequireRoot(t)
	snapOnce.Do(func() {
		var err error
		if snapDir, err = os.MkdirTemp("", "thaw-probe-snap-"); err != nil {
			t.Fatal(err)
		}
		snap = sandboxtest.ProbeSnapshot(t, snapDir)
	})
	if snap.VMState == "" {
		t.Fatal("the probe snapshot could not be taken (see the first test's failure)")
	}
	return snap
}

type env struct {
	st       *store.Store
	lay      layout.Layout
	settings *live.Settings
	m        *sandbox.Manager
	opts     sandbox.Options
}

// newEnv gives a test a data directory on a loop-mounted XFS (reflinks), a
// real store and a Manager running the real thaw-shim and thaw-vmm, with
// the probe registered as template "probe" (serial ready check).
func newEnv(t testing.TB, mutate func(*sandbox.Options)) *env {
	t.Helper()
	probeSnapshot(t)
	bins := sandboxtest.Binaries(t)
	mnt := disktest.Mount(t, "xfs", 400)
	lay, err := layout.New(filepath.Join(mnt, "d"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(lay.Root(), 0o700); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(lay.Store(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := lay.Init(); err != nil {
		t.Fatal(err)
	}
	settings, err := live.New(config.Default())
	if err != nil {
		t.Fatal(err)
	}
	e := &env{st: st, lay: lay, settings: settings}
	e.opts = sandbox.Options{Store: st, Layout: lay, Settings: settings, Shim: filepath.Join(bins, "thaw-shim"),
		VMM: shim.BuiltinVMM, Prefetch: true, ReadyTimeout: 20 * time.Second, MaxActions: 10}
	if mutate != nil {
		mutate(&e.opts)
	}
	if e.m, err = sandbox.New(e.opts); err != nil {
		t.Fatal(err)
	}
	e.register(t, "probe", store.ReadyCheck{Kind: store.ReadySerial, Marker: sandboxtest.ReadyMarker})
	t.Cleanup(func() {
		// Whatever a test left running is a leak: delete it, then check.
		if sbs, _ := st.Sandboxes(); len(sbs) > 0 {
			for _, sb := range sbs {
				e.m.Delete(context.Background(), sb.ID)
			}
		}
		if err := st.Check(); err != nil {
			t.Errorf("store check: %v", err)
		}
		st.Close()
	})
	return e
}

func (e *env) register(t testing.TB, name string, ready store.ReadyCheck) store.Template {
	t.Helper()
	return e.registerSnapshot(t, name, probeSnapshot(t), ready, false)
}

// registerSnapshot registers probe snapshot s as template name, with its
// recording run when record is set (an access log for ordered prefetch).
func (e *env) registerSnapshot(t testing.TB, name string, s sandboxtest.Snapshot, ready store.ReadyCheck, record bool) store.Template {
	t.Helper()
	req := template.RegisterRequest{Name: name, VMState: s.VMState, Memory: s.Memory,
		Rootfs: s.Rootfs, Kernel: s.Kernel, VCPUs: sandboxtest.ProbeVCPUs, MemoryMiB: sandboxtest.ProbeMemMiB, Ready: ready}
	if record {
		req.Record = e.m.RecordFunc()
	}
	tpl, err := template.Register(context.Background(), e.st, e.lay, req)
	if err != nil {
		t.Fatal(err)
	}
	return tpl
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// assertGone checks that nothing of sandbox id is left: record, directory,
// process.
func (e *env) assertGone(t *testing.T, id string) {
	t.Helper()
	if _, err := e.st.Sandbox(id); !errdefs.IsNotFound(err) {
		t.Errorf("record of %s: got %v, want not found", id, err)
	}
	dir := e.lay.SandboxDir(id)
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("directory %s: got %v, want it gone", dir, err)
	}
	if pids := sandboxtest.ProcessesUnder(dir); len(pids) > 0 {
		t.Errorf("processes left for %s: %v", id, pids)
	}
	if n := e.settings.Slots().Stats().InUse; n != 0 {
		t.Errorf("restore slots in use after the create: got %d, want 0", n)
	}
}

func serialLog(t *testing.T, sb store.Sandbox) string {
	data, err := os.ReadFile(filepath.Join(sb.Dir, shim.VMMLogName))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// waitTicks waits until the sandbox's serial log has more than n ticks.
func waitTicks(t *testing.T, sb store.Sandbox, n int) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c := strings.Count(serialLog(t, sb), sandboxtest.ReadyMarker); c > n {
			return c
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("sandbox %s printed no tick beyond %d in 30s:\n%s", sb.ID, n, serialLog(t, sb))
	return 0
}

// TestCreateDelete restores the probe template through the real shim and
// thaw-vmm with each backend: the sandbox runs (its guest keeps ticking
// after the restore), its record names a live shim and its create timings,
// and delete leaves nothing.
func TestCreateDelete(t *testing.T) {
	for _, uffd := range []bool{true, false} {
		t.Run("uffd="+strconv.FormatBool(uffd), func(t *testing.T) {
			e := newEnv(t, nil)
			e.settings.SetUFFD(uffd)
			sb, err := e.m.Create(ctxT(t), sandbox.CreateRequest{ID: "one", Template: "probe"})
			if err != nil {
				t.Fatal(err)
			}
			if sb.State != store.Running || sb.UFFD != uffd || sb.Shim.PID == 0 {
				t.Errorf("record after create: got %+v, want running, uffd %v, a shim", sb, uffd)
			}
			var names []string
			for _, p := range sb.Create {
				names = append(names, p.Name)
			}
			t.Logf("create phases: %v", sb.Create)
			if want := []string{"slot", "record", "dir", "disk", "shim", "load", "handshake", "ready"}; !slices.Equal(names, want) {
				t.Errorf("create phases: got %v, want %v", names, want)
			}
			if alive, err := proc.Alive(sb.Shim.PID, sb.Shim.StartTime); !alive || err != nil {
				t.Errorf("shim %d alive: got %v, %v", sb.Shim.PID, alive, err)
			}
			log := serialLog(t, sb)
			if strings.Contains(log, "probe: boot") {
				t.Errorf("the restored guest booted again:\n%s", log)
			}
			waitTicks(t, sb, strings.Count(log, sandboxtest.ReadyMarker))
			if _, err := os.Stat(filepath.Join(sb.Dir, sandbox.DiskName)); err != nil {
				t.Errorf("sandbox disk: %v", err)
			}
			if err := e.m.Delete(ctxT(t), sb.ID); err != nil {
				t.Fatal(err)
			}
			e.assertGone(t, sb.ID)
		})
	}
}

// TestCreateFailures drives the failure paths of issue 7 through the real
// shim and VMM: each ends in a clear error of the right kind and leaves no
// process, socket, directory or record.
func TestCreateFailures(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(testing.TB, *sandbox.Options)
		prepare func(t *testing.T, e *env) string // returns the template
		uffd    bool
		kind    *errdefs.Kind // nil: any kind
		want    string
	}{
		{name: "unknown-template", uffd: true, kind: errdefs.ErrNotFound, want: `template "nope" not found`,
			prepare: func(*testing.T, *env) string { return "nope" }},
		{name: "vmm-exits", uffd: true, kind: errdefs.ErrUnavailable, want: "did not start",
			mutate:  func(_ testing.TB, o *sandbox.Options) { o.VMM = "/bin/false" },
			prepare: func(*testing.T, *env) string { return "probe" }},
		// thaw-vmm's load waits for the first served page, so a page
		// server refusing the handshake fails the load ...
		{name: "trunc-mem-uffd", uffd: true, want: "the page server failed, so the shim stopped the VMM: page server: region 0",
			prepare: truncateMemory},
		// ... while firecracker's load succeeds regardless, and only the
		// shim's verdict (the handshake phase) tells the create failed.
		{name: "handshake-fails-after-load", uffd: true, want: "handshake: page server handshake failed: page server: region 0",
			mutate: func(t testing.TB, o *sandbox.Options) {
				o.VMM = sandboxtest.FirecrackerLikeVMM(t, int64(sandboxtest.ProbeMemMiB)<<20)
			},
			prepare: truncateMemory},
		{name: "no-handshake-after-load", uffd: true, kind: errdefs.ErrDeadlineExceeded,
			want: "handshake: the VMM's snapshot load succeeded, but no UFFD handshake reached the page server within 2s",
			mutate: func(t testing.TB, o *sandbox.Options) {
				o.VMM = sandboxtest.SilentUffdVMM(t)
				o.ReadyTimeout = 2 * time.Second
			},
			prepare: func(*testing.T, *env) string { return "probe" }},
		{name: "trunc-mem-file", uffd: false, want: "the VMM refused the snapshot",
			prepare: truncateMemory},
		{name: "never-ready", uffd: true, kind: errdefs.ErrDeadlineExceeded, want: "did not appear on the serial console",
			mutate: func(_ testing.TB, o *sandbox.Options) { o.ReadyTimeout = 2 * time.Second },
			prepare: func(t *testing.T, e *env) string {
				e.register(t, "silent", store.ReadyCheck{Kind: store.ReadySerial, Marker: "a line the probe never prints"})
				return "silent"
			}},
		// A guest with a vsock device but no agent: health is never
		// answered, so the ready phase runs out of time.
		{name: "agent-never-healthy", uffd: true, kind: errdefs.ErrDeadlineExceeded, want: "ready: agent health: ",
			mutate: func(_ testing.TB, o *sandbox.Options) { o.ReadyTimeout = 2 * time.Second },
			prepare: func(t *testing.T, e *env) string {
				s := sandboxtest.ProbeSnapshotWith(t, t.TempDir(), sandboxtest.ProbeConfig{Vsock: true})
				if _, err := template.Register(ctxT(t), e.st, e.lay, template.RegisterRequest{Name: "agentless", VMState: s.VMState, Memory: s.Memory,
					Rootfs: s.Rootfs, Kernel: s.Kernel, VCPUs: s.VCPUs, MemoryMiB: s.MemMiB, Ready: store.ReadyCheck{Kind: store.ReadyAgent}}); err != nil {
					t.Fatal(err)
				}
				return "agentless"
			}},
		{name: "full-disk", uffd: true, kind: errdefs.ErrResourceExhausted, want: "no space left on device",
			prepare: func(t *testing.T, e *env) string {
				fillDisk(t, e.lay.Root())
				return "probe"
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, func(o *sandbox.Options) {
				if tc.mutate != nil {
					tc.mutate(t, o)
				}
			})
			e.settings.SetUFFD(tc.uffd)
			tpl := tc.prepare(t, e)
			_, err := e.m.Create(ctxT(t), sandbox.CreateRequest{ID: "doomed", Template: tpl})
			if err == nil {
				t.Fatal("create succeeded, want an error")
			}
			t.Logf("error: %v", err)
			if tc.kind != nil && !errors.Is(err, tc.kind) {
				t.Errorf("error kind: got %v, want %v", errdefs.KindOf(err), tc.kind)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			e.assertGone(t, "doomed")
		})
	}
}

// truncateMemory cuts the probe build's published memory file in half.
func truncateMemory(t *testing.T, e *env) string {
	tpl, err := e.st.Template("probe")
	if err != nil {
		t.Fatal(err)
	}
	b := tpl.BuildByID(tpl.Current)
	if err := os.Truncate(filepath.Join(b.Dir, b.Artifacts.Memory), int64(sandboxtest.ProbeMemMiB)<<19); err != nil {
		t.Fatal(err)
	}
	return "probe"
}

// fillDisk writes a file until the filesystem holding dir is full.
func fillDisk(t *testing.T, dir string) {
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	f.Sync()
	// Small writes fill what is left.
	for i := 0; ; i++ {
		g, err := os.Create(filepath.Join(dir, "filler-"+strconv.Itoa(i)))
		if err != nil {
			break
		}
		_, err = g.Write(buf[:4096])
		g.Close()
		if err != nil {
			break
		}
	}
}

// TestConcurrentDelete deletes one sandbox from two goroutines at once:
// exactly one delete does it, the other is refused (in progress) or finds
// nothing, and nothing is left. A delete during a create is refused.
func TestConcurrentDelete(t *testing.T) {
	e := newEnv(t, nil)
	sb, err := e.m.Create(ctxT(t), sandbox.CreateRequest{ID: "twice", Template: "probe"})
	if err != nil {
		t.Fatal(err)
	}
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = e.m.Delete(ctxT(t), sb.ID) }()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errdefs.IsFailedPrecondition(err), errdefs.IsNotFound(err):
		default:
			t.Errorf("second delete: got %v, want failed precondition or not found", err)
		}
	}
	if ok != 1 {
		t.Errorf("successful deletes: got %d (%v), want 1", ok, errs)
	}
	e.assertGone(t, sb.ID)
	if err := e.m.Delete(ctxT(t), "never-created"); !errdefs.IsNotFound(err) {
		t.Errorf("delete of an unknown sandbox: got %v, want not found", err)
	}

	// A delete during a create is refused, not raced; the create finishes
	// and a later delete works.
	created := make(chan error, 1)
	go func() {
		_, err := e.m.Create(ctxT(t), sandbox.CreateRequest{ID: "racing", Template: "probe"})
		created <- err
	}()
	for {
		if _, err := e.st.Sandbox("racing"); err == nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err := e.m.Delete(ctxT(t), "racing"); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "create is in progress") {
		t.Errorf("delete during the create: got %v, want failed precondition (create in progress)", err)
	}
	if err := <-created; err != nil {
		t.Fatalf("the create a delete tried to interrupt: %v", err)
	}
	if err := e.m.Delete(ctxT(t), "racing"); err != nil {
		t.Fatal(err)
	}
	e.assertGone(t, "racing")
}

// TestPauseResume pauses a running probe sandbox into its directory (no
// process remains) and resumes it in place: the guest goes on ticking.
func TestPauseResume(t *testing.T) {
	e := newEnv(t, nil)
	sb, err := e.m.Create(ctxT(t), sandbox.CreateRequest{ID: "nap", Template: "probe"})
	if err != nil {
		t.Fatal(err)
	}
	waitTicks(t, sb, 0)
	p, err := e.m.Pause(ctxT(t), sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	if p.State != store.Paused || !p.Shim.IsZero() {
		t.Errorf("after pause: got state %s shim %+v, want paused, no shim", p.State, p.Shim)
	}
	if pids := sandboxtest.ProcessesUnder(sb.Dir); len(pids) > 0 {
		t.Errorf("processes of a paused sandbox: %v", pids)
	}
	for _, f := range []string{sandbox.PauseStateName, sandbox.PauseMemName} {
		if _, err := os.Stat(filepath.Join(sb.Dir, f)); err != nil {
			t.Errorf("pause snapshot: %v", err)
		}
	}
	if _, err := e.m.Pause(ctxT(t), sb.ID); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("pausing a paused sandbox: got %v, want failed precondition", err)
	}
	before := strings.Count(serialLog(t, sb), sandboxtest.ReadyMarker)
	r, err := e.m.Resume(ctxT(t), sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != store.Running || r.Shim.PID == 0 || r.Shim.PID == sb.Shim.PID {
		t.Errorf("after resume: got state %s shim %+v, want running under a new shim", r.State, r.Shim)
	}
	waitTicks(t, r, before)
	if err := e.m.Delete(ctxT(t), sb.ID); err != nil {
		t.Fatal(err)
	}
	e.assertGone(t, sb.ID)
}

// TestReconcile: a record whose shim was killed becomes failed with the
// reason; a shim whose record is gone is stopped; live sandboxes are
// reattached and keep running.
func TestReconcile(t *testing.T) {
	e := newEnv(t, nil)
	var sbs []store.Sandbox
	for _, id := range []string{"keep", "killed", "orphan"} {
		sb, err := e.m.Create(ctxT(t), sandbox.CreateRequest{ID: id, Template: "probe"})
		if err != nil {
			t.Fatal(err)
		}
		sbs = append(sbs, sb)
	}
	p, err := os.FindProcess(sbs[1].Shim.PID)
	if err != nil {
		t.Fatal(err)
	}
	p.Kill()
	for alive := true; alive; {
		alive, _ = proc.Alive(sbs[1].Shim.PID, sbs[1].Shim.StartTime)
		time.Sleep(10 * time.Millisecond)
	}
	// The orphan's record disappears behind the manager's back.
	if _, err := e.st.UpdateSandbox("orphan", func(s *store.Sandbox) error { s.State, s.Reason = store.Failed, "test"; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := e.st.DeleteSandbox("orphan"); err != nil {
		t.Fatal(err)
	}
	plan, err := e.m.Reconcile(ctxT(t), true)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]reconcile.Kind{}
	for _, a := range plan.Actions {
		got[a.Sandbox] = a.Kind
	}
	want := map[string]reconcile.Kind{"keep": reconcile.Reattach, "killed": reconcile.FailRecord, "orphan": reconcile.StopShim}
	for id, k := range want {
		if got[id] != k {
			t.Errorf("action for %s: got %v, want %v (plan %+v)", id, got[id], k, plan)
		}
	}
	if k, err := e.st.Sandbox("killed"); err != nil || k.State != store.Failed || !strings.Contains(k.Reason, "gone") {
		t.Errorf("killed sandbox: got %+v, %v, want failed because its shim is gone", k, err)
	}
	if pids := sandboxtest.ProcessesUnder(sbs[2].Dir); len(pids) > 0 {
		t.Errorf("orphan shim still running: %v", pids)
	}
	keep, _ := e.st.Sandbox("keep")
	if keep.State != store.Running {
		t.Errorf("keep: got %s, want running", keep.State)
	}
	waitTicks(t, keep, strings.Count(serialLog(t, keep), sandboxtest.ReadyMarker))
	// A second pass has nothing destructive to do.
	if plan, err := e.m.Reconcile(ctxT(t), false); err != nil || len(plan.Actions) != 1 || plan.Actions[0].Kind != reconcile.Reattach {
		t.Errorf("second pass: got %+v, %v, want only keep's reattach", plan, err)
	}
	for _, id := range []string{"keep", "killed"} {
		if err := e.m.Delete(ctxT(t), id); err != nil {
			t.Errorf("deleting %s: %v", id, err)
		}
		e.assertGone(t, id)
	}
	os.RemoveAll(sbs[2].Dir)
}

// TestReconcileSlowShim: a shim that does not answer the reconciler (here
// stopped with SIGSTOP; on a loaded host, just slow) but whose process is
// alive is not failed: its sandbox keeps running and answers once the shim
// does. Failing the record would stop a healthy VM, which the main job
// saw happen in the nested harness under a load average of 32.
func TestReconcileSlowShim(t *testing.T) {
	e := newEnv(t, nil)
	sb, err := e.m.Create(ctxT(t), sandbox.CreateRequest{ID: "slow", Template: "probe"})
	if err != nil {
		t.Fatal(err)
	}
	stopProcess(t, sb.Shim.PID)
	cont := func() { syscall.Kill(sb.Shim.PID, syscall.SIGCONT) }
	defer cont()
	plan, err := e.m.Reconcile(ctxT(t), false)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := e.st.Sandbox("slow"); got.State != store.Running {
		t.Errorf("after a pass that could not reach the shim: got %s (%s), want running (plan %+v)", got.State, got.Reason, plan)
	}
	cont()
	if plan, err := e.m.Reconcile(ctxT(t), false); err != nil || len(plan.Actions) != 1 || plan.Actions[0].Kind != reconcile.Reattach {
		t.Errorf("the pass after the shim answers again: got %+v, %v, want only a reattach", plan, err)
	}
	waitTicks(t, sb, strings.Count(serialLog(t, sb), sandboxtest.ReadyMarker))
}

// stopProcess sends pid SIGSTOP and waits until every one of its threads
// has stopped: kill(2) returns before the group stop is complete, and a
// thread still running could answer one more request.
func stopProcess(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		if err != nil || len(tasks) == 0 {
			t.Fatalf("threads of %d: %v (none found)", pid, err)
		}
		running := 0
		for _, f := range tasks {
			b, err := os.ReadFile(f)
			if err != nil {
				continue // a thread that exited
			}
			if st, err := proc.ParseStat(b); err == nil && st.State != 'T' && st.State != 't' {
				running++
			}
		}
		if running == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d threads of %d still not stopped 10s after SIGSTOP", running, len(tasks), pid)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestReconcileWedgedShim: a shim that is alive but never answers (here
// stopped with SIGSTOP) is left alone by passes until it has been silent,
// in every pass, for the unresponsive limit; a pass in which it answers
// starts the count over. Past the limit it is failed with a reason that
// says so, and its shim and VMM are killed and its sockets removed, while
// a healthy sandbox next to it is reattached in every pass. Deleting it
// then leaves nothing.
func TestReconcileWedgedShim(t *testing.T) {
	const limit = 6 * time.Second
	e := newEnv(t, func(o *sandbox.Options) { o.UnresponsiveLimit = limit })
	wedged, err := e.m.Create(ctxT(t), sandbox.CreateRequest{ID: "wedged", Template: "probe"})
	if err != nil {
		t.Fatal(err)
	}
	healthy, err := e.m.Create(ctxT(t), sandbox.CreateRequest{ID: "healthy", Template: "probe"})
	if err != nil {
		t.Fatal(err)
	}
	// The shim, with the VMM built in (thawd's default) or as its child.
	procs := sandboxtest.ProcessesUnder(wedged.Dir)
	if !slices.Contains(procs, wedged.Shim.PID) {
		t.Fatalf("processes of the wedged sandbox: got %v, want its shim (%d) among them", procs, wedged.Shim.PID)
	}
	type ident struct {
		pid   int
		start uint64
	}
	var idents []ident
	for _, pid := range procs {
		if st, err := proc.ReadStat(pid); err == nil {
			idents = append(idents, ident{pid, st.StartTime})
		}
	}
	stop := func() {
		stopProcess(t, wedged.Shim.PID)
	}
	cont := func() { syscall.Kill(wedged.Shim.PID, syscall.SIGCONT) }
	defer cont()
	// pass runs one periodic pass and returns what it did to wedged.
	pass := func() (acted, waiting bool) {
		t.Helper()
		plan, err := e.m.Reconcile(ctxT(t), false)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range plan.Actions {
			if a.Sandbox == "healthy" && a.Kind != reconcile.Reattach {
				t.Errorf("healthy sandbox: got %v (%s), want reattach", a.Kind, a.Reason)
			}
			if a.Sandbox == "wedged" && a.Kind != reconcile.Reattach {
				acted = true
			}
		}
		for _, a := range plan.Waiting {
			waiting = waiting || a.Sandbox == "wedged"
		}
		return acted, waiting
	}
	state := func() store.Sandbox {
		t.Helper()
		sb, err := e.st.Sandbox("wedged")
		if err != nil {
			t.Fatal(err)
		}
		return sb
	}

	stop()
	first := time.Now()
	for i := 1; i <= 2; i++ {
		if acted, waiting := pass(); acted || !waiting || state().State != store.Running {
			t.Fatalf("pass %d, %v after the shim stopped answering (limit %v): acted %t, waiting %t, state %s; want it left alone, waiting",
				i, time.Since(first).Round(time.Millisecond), limit, acted, waiting, state().State)
		}
	}
	// It answers once: the silence starts over, so a pass past the limit
	// counted from the first silence leaves it alone still.
	cont()
	if acted, waiting := pass(); acted || waiting {
		t.Fatalf("the pass after the shim answered again: acted %t, waiting %t; want only a reattach", acted, waiting)
	}
	stop()
	time.Sleep(time.Until(first.Add(limit + time.Second)))
	if acted, waiting := pass(); acted || !waiting || state().State != store.Running {
		t.Fatalf("silent again for less than the limit (%v after the first silence): acted %t, waiting %t, state %s; want left alone",
			time.Since(first).Round(time.Millisecond), acted, waiting, state().State)
	}
	time.Sleep(limit)
	if acted, _ := pass(); !acted {
		t.Fatalf("silent for longer than the limit: the pass did nothing to it (state %s)", state().State)
	}
	sb := state()
	if sb.State != store.Failed || !strings.Contains(sb.Reason, "alive but its control socket has not answered for") ||
		!strings.Contains(sb.Reason, "shim_unresponsive_limit") || !sb.Shim.IsZero() {
		t.Errorf("wedged sandbox: got %s (%q), shim %+v; want failed saying the shim did not answer within the limit, and no shim", sb.State, sb.Reason, sb.Shim)
	}
	t.Logf("reason: %s", sb.Reason)
	for _, id := range idents {
		if alive, _ := proc.Alive(id.pid, id.start); alive {
			t.Errorf("process %d of the wedged sandbox (shim or VMM) is still alive", id.pid)
		}
	}
	if pids := sandboxtest.ProcessesUnder(wedged.Dir); len(pids) > 0 {
		t.Errorf("processes left in the wedged sandbox's directory: %v", pids)
	}
	ents, err := os.ReadDir(wedged.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, ent := range ents {
		if ent.Type()&os.ModeSocket != 0 {
			t.Errorf("socket %s left in the wedged sandbox's directory", ent.Name())
		}
	}
	// The next pass has nothing more to do to it.
	if acted, waiting := pass(); acted || waiting {
		t.Errorf("the pass after failing it: acted %t, waiting %t; want nothing", acted, waiting)
	}
	waitTicks(t, healthy, strings.Count(serialLog(t, healthy), sandboxtest.ReadyMarker))
	if err := e.m.Delete(ctxT(t), "wedged"); err != nil {
		t.Fatal(err)
	}
	e.assertGone(t, "wedged")
}

// TestTTLExpires: a reconciler pass after a sandbox's TTL deletes it, and
// leaves one without a TTL alone.
func TestTTLExpires(t *testing.T) {
	e := newEnv(t, nil)
	const ttl = 4 * time.Second
	short, err := e.m.Create(ctxT(t), sandbox.CreateRequest{ID: "short", Template: "probe", TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	if short.ExpiresAt.IsZero() || short.ExpiresAt.Sub(short.CreatedAt) != ttl {
		t.Errorf("expiry: got %v after %v, want %v after the create", short.ExpiresAt, short.CreatedAt, ttl)
	}
	if _, err := e.m.Create(ctxT(t), sandbox.CreateRequest{ID: "long", Template: "probe"}); err != nil {
		t.Fatal(err)
	}
	// On a loaded machine the creates can outlast the TTL; what matters is
	// that a pass expires the sandbox exactly when the TTL has passed.
	expired := func(p reconcile.Plan) bool {
		return slices.ContainsFunc(p.Actions, func(a reconcile.Action) bool { return a.Kind == reconcile.Expire && a.Sandbox == "short" })
	}
	passStart := time.Now()
	plan, err := e.m.Reconcile(ctxT(t), false)
	if err != nil {
		t.Fatal(err)
	}
	if passStart.Before(short.ExpiresAt) {
		if expired(plan) {
			t.Errorf("a pass before the TTL expired the sandbox: %+v", plan.Actions)
		}
		time.Sleep(time.Until(short.ExpiresAt))
		if plan, err = e.m.Reconcile(ctxT(t), false); err != nil {
			t.Fatal(err)
		}
	}
	if !expired(plan) {
		t.Errorf("the pass after the TTL: got %+v, want short's expiry", plan.Actions)
	}
	e.assertGone(t, "short")
	if sb, err := e.st.Sandbox("long"); err != nil || sb.State != store.Running {
		t.Errorf("the sandbox without a TTL: got %+v, %v, want running", sb, err)
	}
}

// TestRecordedTemplate registers the probe with a recording run: an
// ephemeral build- VM restores it under a recording page server until the
// settle detector converges; the build gets the access log, sandboxes
// restored from it prefetch in its order, and nothing of the build VM is
// left.
func TestRecordedTemplate(t *testing.T) {
	e := newEnv(t, func(o *sandbox.Options) { o.RecordMax = 5 * time.Second })
	s := probeSnapshot(t)
	tpl, err := template.Register(ctxT(t), e.st, e.lay, template.RegisterRequest{Name: "rec", VMState: s.VMState, Memory: s.Memory,
		Rootfs: s.Rootfs, VCPUs: sandboxtest.ProbeVCPUs, MemoryMiB: sandboxtest.ProbeMemMiB,
		Ready: store.ReadyCheck{Kind: store.ReadySerial, Marker: sandboxtest.ReadyMarker}, Record: e.m.RecordFunc()})
	if err != nil {
		t.Fatal(err)
	}
	b := tpl.BuildByID(tpl.Current)
	if b.Artifacts.AccessLog != template.AccessLogName || b.AccessLogPages <= 0 {
		t.Fatalf("build after a recording run: got access log %q with %d pages, want %q with some", b.Artifacts.AccessLog, b.AccessLogPages, template.AccessLogName)
	}
	data, err := os.ReadFile(filepath.Join(b.Dir, b.Artifacts.AccessLog))
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(string(data), "\n"); int64(lines) != b.AccessLogPages+1 {
		t.Errorf("access log: %d lines, want a header and %d pages", lines, b.AccessLogPages)
	}
	if names := phaseNames(b.Timings); !slices.Equal(names, []string{"copy", "record-restore", "record-ready", "record-settle", "record-stop"}) {
		t.Errorf("build timings: got %v, want copy and the recording run's restore, ready, settle, stop", names)
	}
	if pids := sandboxtest.ProcessesUnder(filepath.Join(e.lay.Root(), "tmp")); len(pids) > 0 {
		t.Errorf("processes of the build VM left: %v", pids)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.lay.Root(), "tmp")); len(ents) > 0 {
		t.Errorf("left in tmp after the build: %v", ents)
	}
	sb, err := e.m.Create(ctxT(t), sandbox.CreateRequest{ID: "replayed", Template: "rec"})
	if err != nil {
		t.Fatal(err)
	}
	waitTicks(t, sb, strings.Count(serialLog(t, sb), sandboxtest.ReadyMarker))
	// With an access log the prefetcher copies only the logged pages;
	// without one it would copy all 16384.
	h, err := shim.Attach(ctxT(t), sb.Shim.ControlSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var st shim.PageStats
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if st, err = h.Stats(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		if st.PrefetchedPages+st.ZeroPages > 0 {
			break
		}
	}
	t.Logf("recorded %d pages; the replayed sandbox: %d prefetched, %d by faults, %d zero", b.AccessLogPages, st.PrefetchedPages, st.FaultPages, st.ZeroPages)
	if st.PrefetchedPages+st.ZeroPages == 0 || st.PrefetchedPages > uint64(b.AccessLogPages) {
		t.Errorf("prefetched pages: got %d (stats %+v), want some and at most the %d logged", st.PrefetchedPages, st.Stats, b.AccessLogPages)
	}
	if ps, ok := e.m.Pages(ctxT(t), sb); !ok || ps.Prefetch != shim.PrefetchOrdered || int64(ps.OrderPages) != b.AccessLogPages {
		t.Errorf("Pages: got %+v, %t; want ordered prefetch of the %d logged pages", ps, ok, b.AccessLogPages)
	}

	// thawd restarted with prefetch off (THAW_UFFD_PREFETCH=off) still
	// creates from the recorded build: on demand, the access log unused.
	opts := e.opts
	opts.Prefetch = false
	off, err := sandbox.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	sb, err = off.Create(ctxT(t), sandbox.CreateRequest{ID: "ondemand", Template: "rec"})
	if err != nil {
		t.Fatalf("create from a recorded build with prefetch off: %v", err)
	}
	if ps, ok := off.Pages(ctxT(t), sb); !ok || ps.Prefetch != shim.PrefetchOff || ps.PrefetchedPages != 0 {
		t.Errorf("Pages with prefetch off: got %+v, %t; want serving, prefetch off, nothing prefetched", ps, ok)
	}
}

func phaseNames(ps []store.Phase) []string {
	var names []string
	for _, p := range ps {
		names = append(names, p.Name)
	}
	return names
}

// TestUFFDSwitch: switching UFFD off at run time makes the next create use
// the File backend while the running sandbox keeps its page server.
func TestUFFDSwitch(t *testing.T) {
	e := newEnv(t, nil)
	a, err := e.m.Create(ctxT(t), sandbox.CreateRequest{ID: "lazy", Template: "probe"})
	if err != nil {
		t.Fatal(err)
	}
	e.settings.SetUFFD(false)
	b, err := e.m.Create(ctxT(t), sandbox.CreateRequest{ID: "eager", Template: "probe"})
	if err != nil {
		t.Fatal(err)
	}
	if !a.UFFD || b.UFFD {
		t.Errorf("backends: got uffd %v and %v, want true then false", a.UFFD, b.UFFD)
	}
	h, err := shim.Attach(ctxT(t), a.Shim.ControlSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if st, err := h.Stats(ctxT(t)); err != nil || !st.Serving {
		t.Errorf("the first sandbox's page server after the switch: got %+v, %v, want serving", st, err)
	}
	waitTicks(t, a, strings.Count(serialLog(t, a), sandboxtest.ReadyMarker))
	if got := len(e.m.PageStats(ctxT(t))); got != 1 {
		t.Errorf("page servers reported for metrics: got %d, want 1 (the File sandbox has none)", got)
	}
}
