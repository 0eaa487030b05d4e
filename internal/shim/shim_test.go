package shim_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/shim"
	"github.com/thawvm/thaw/internal/testenv"
	"github.com/thawvm/thaw/internal/uffd"
	"github.com/thawvm/thaw/internal/uffd/uffdtest"
)

// shimBin is cmd/thaw-shim, built once by TestMain: the tests run the real
// binary, started the way thawd starts it.
var shimBin string

// launcherEnv turns the re-executed test binary into a stand-in for thawd
// that starts a shim, prints its pid and waits to be killed.
const launcherEnv = "THAW_SHIMTEST_LAUNCHER"

type launchSpec struct {
	Binary string
	Config shim.Config
}

func TestMain(m *testing.M) {
	maybeRunFakeVMM()
	maybeRunLauncher()
	dir, err := os.MkdirTemp("", "thaw-shim-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	shimBin = filepath.Join(dir, "thaw-shim")
	// go test puts $GOROOT/bin first in PATH.
	args := []string{"build", "-o", shimBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	out, err := exec.Command("go", append(args, "github.com/thawvm/thaw/cmd/thaw-shim")...).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building thaw-shim: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if probeDir != "" {
		os.RemoveAll(probeDir)
	}
	os.Exit(code)
}

func maybeRunLauncher() {
	v, ok := os.LookupEnv(launcherEnv)
	if !ok {
		return
	}
	var spec launchSpec
	if err := json.Unmarshal([]byte(v), &spec); err != nil {
		fmt.Printf("error: %v\n", err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	h, err := shim.Start(ctx, spec.Binary, spec.Config)
	cancel()
	if err != nil {
		fmt.Printf("error: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("%d\n", h.PID)
	select {} // until killed
}

const memSize = 4 << 20

// vm is one test VM: its directory, memory file and shim configuration.
type vm struct {
	t       testing.TB
	cfg     shim.Config
	memFile string
}

// newVM prepares a VM directory, a memory file and a fake VMM following
// spec, with a configuration serving pages with prefetch; adjust changes
// the configuration.
func newVM(t testing.TB, spec fakeSpec, adjust func(*shim.Config)) *vm {
	t.Helper()
	testenv.RequireUFFD(t)
	dir := t.TempDir()
	vmDir := filepath.Join(dir, "vm")
	if err := os.Mkdir(vmDir, 0o755); err != nil {
		t.Fatal(err)
	}
	memFile := filepath.Join(dir, "mem")
	if err := uffdtest.WriteMemoryFile(memFile, memSize, 7); err != nil {
		t.Fatal(err)
	}
	spec.MemFile = memFile
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("shim log:\n%s\nVMM log:\n%s", readFile(filepath.Join(vmDir, shim.ShimLogName)), readFile(filepath.Join(vmDir, shim.VMMLogName)))
		}
	})
	cfg := shim.Config{
		ID: "sb-1", Dir: vmDir, VMM: writeFakeVMM(t, dir, spec), VMMID: "sb-1",
		Pages: shim.PagesServe, MemFile: memFile, Prefetch: true,
		ReadyTimeout: 10 * time.Second, HandshakeTimeout: 20 * time.Second, StopGrace: 5 * time.Second,
	}
	if adjust != nil {
		adjust(&cfg)
	}
	return &vm{t: t, cfg: cfg, memFile: memFile}
}

// writeFakeVMM writes an executable that runs this test binary as a fake
// VMM following spec, passing its arguments on.
func writeFakeVMM(t testing.TB, dir string, spec fakeSpec) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	specPath := filepath.Join(dir, "fakevmm.json")
	if err := os.WriteFile(specPath, js, 0o644); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf("#!/bin/sh\n%s=\"$(cat %s)\" exec %s \"$@\"\n", fakeVMMEnv, specPath, exe)
	path := filepath.Join(dir, "fake-vmm")
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// killOnCleanup kills pid when the test ends, through a pidfd opened now so
// that a reused pid is never hit; a process already gone is left alone.
func killOnCleanup(t testing.TB, pid int) {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return // already gone
	}
	t.Cleanup(func() {
		unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
		unix.Close(fd)
	})
}

// start starts the shim and arranges for it and its VMM to be killed if
// the test ends early.
func (v *vm) start(ctx context.Context) *shim.Handle {
	v.t.Helper()
	h, err := shim.Start(ctx, shimBin, v.cfg)
	if err != nil {
		v.t.Fatalf("Start: %v\nshim log:\n%s", err, readFile(v.cfg.ShimLog()))
	}
	killOnCleanup(v.t, h.PID)
	st, err := h.Status(ctx)
	if err != nil {
		v.t.Fatal(err)
	}
	killOnCleanup(v.t, st.VMMPID)
	v.t.Cleanup(func() { h.Close() })
	if st.State != shim.StateRunning || st.VMMPID == 0 || st.ShimPID != h.PID {
		v.t.Fatalf("after Start: got state %s, vmm pid %d, shim pid %d; want running with a VMM pid and shim pid %d", st.State, st.VMMPID, st.ShimPID, h.PID)
	}
	return h
}

// load does what thawd does after Start: PUT /snapshot/load with the Uffd
// backend pointing at the shim's page server.
func (v *vm) load(ctx context.Context, h *shim.Handle) error {
	c := fcapi.NewClient(h.APISocket)
	defer c.Close()
	return c.LoadSnapshot(ctx, fcapi.SnapshotLoadParams{
		SnapshotPath: filepath.Join(v.cfg.Dir, "vmstate"),
		MemBackend:   &fcapi.MemBackend{BackendType: fcapi.MemBackendUffd, BackendPath: h.UFFDSocket},
		ResumeVM:     true,
	})
}

// finish collects the final status, waits for the shim to exit and checks
// that nothing is left: no shim, no VMM, no socket, no status file.
func (v *vm) finish(ctx context.Context, h *shim.Handle) shim.Status {
	v.t.Helper()
	st, err := h.Finish(ctx)
	if err != nil {
		v.t.Fatalf("Finish: %v", err)
	}
	if !st.Collected || !st.Done {
		v.t.Errorf("collected status: got collected=%t done=%t, want both", st.Collected, st.Done)
	}
	v.checkClean(st)
	return st
}

func (v *vm) checkClean(st shim.Status) {
	v.t.Helper()
	if log := readFile(v.cfg.ShimLog()); strings.Contains(log, "DATA RACE") || strings.Contains(log, "invariant broken") {
		v.t.Errorf("the shim found a race or broke a status invariant:\n%s", log)
	}
	if st.ShimPID != 0 {
		if err := st.Check(); err != nil {
			v.t.Errorf("final status %+v: %v", st, err)
		}
	}
	for _, pid := range []int{st.ShimPID, st.VMMPID} {
		if pid != 0 && alive(pid) {
			v.t.Errorf("pid %d still alive after collect", pid)
		}
	}
	ents, err := os.ReadDir(v.cfg.Dir)
	if err != nil {
		v.t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	// The VMM log exists only if a VMM was started.
	if want := []string{shim.ShimLogName, shim.VMMLogName}; !slices.Equal(names, want) && !slices.Equal(names, want[:1]) {
		v.t.Errorf("VM directory after collect: got %q, want only the logs %q", names, want)
	}
}

// alive reports whether pid names a live (not zombie) process.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// eventually polls cond every 5ms for up to 20s.
func eventually(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok, err := cond()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 20s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestServeStatsStop is the normal life of a sandbox: start, load with the
// Uffd backend, handshake OK, every page the guest touches has the memory
// file's bytes, stats add up, collect is refused while the VMM runs, stop
// with SIGTERM, collect, and nothing is left.
func TestServeStatsStop(t *testing.T) {
	ctx := testCtx(t)
	v := newVM(t, fakeSpec{Handshake: hsOK}, nil)
	h := v.start(ctx)
	if err := v.load(ctx, h); err != nil {
		t.Fatalf("snapshot load: %v", err)
	}
	verdict, err := h.Handshake(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := h.Status(ctx)
	if verdict.Err() != nil || verdict.Regions != 2 || verdict.PeerPID != st.VMMPID {
		t.Fatalf("verdict: got %+v (err %v), want ok with 2 regions from the VMM (pid %d)", verdict, verdict.Err(), st.VMMPID)
	}
	var rep fakeReport
	eventually(t, "the guest touching every page", func() (bool, error) {
		rep, err = fakeReportOf(ctx, h.APISocket)
		return rep.Done, err
	})
	if rep.Mismatches != 0 || rep.Touched != memSize/4096 {
		t.Fatalf("guest: got %d pages touched, %d mismatches (%s); want %d, 0", rep.Touched, rep.Mismatches, rep.FirstBad, memSize/4096)
	}
	var stats shim.PageStats
	eventually(t, "prefetch done", func() (bool, error) {
		stats, err = h.Stats(ctx)
		return stats.PrefetchDone, err
	})
	if !stats.Serving || stats.FaultPages+stats.PrefetchedPages != memSize/4096 {
		t.Errorf("stats: got serving=%t, %d fault pages + %d prefetched, want serving and %d pages installed once", stats.Serving, stats.FaultPages, stats.PrefetchedPages, memSize/4096)
	}
	if stats.Prefetch != shim.PrefetchFileOrder || stats.OrderPages != 0 {
		t.Errorf("stats: got prefetch %q with %d ordered pages, want %q (no access log)", stats.Prefetch, stats.OrderPages, shim.PrefetchFileOrder)
	}
	var apiErr *shim.APIError
	if _, err := h.Collect(ctx); !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusConflict {
		t.Errorf("collect while running: got %v, want 409", err)
	}
	st, err = h.Stop(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != shim.StateVMMExited || !st.Stopped || st.Exit == nil || st.Exit.Signal != int(syscall.SIGTERM) {
		t.Errorf("after stop: got state %s, stopped %t, exit %v; want vmm-exited, stopped, killed by SIGTERM", st.State, st.Stopped, st.Exit)
	}
	final, err := h.Stats(ctx)
	if err != nil || final.FaultPages+final.PrefetchedPages != memSize/4096 {
		t.Errorf("stats after the VMM exited: got %+v, %v; want them kept", final, err)
	}
	v.finish(ctx, h)
}

// TestHandshakeNeverArrives: the VMM's load "succeeds" but no handshake
// comes; the verdict fails at the deadline (distinguishable from the OK
// load), and the VMM is killed.
func TestHandshakeNeverArrives(t *testing.T) {
	ctx := testCtx(t)
	v := newVM(t, fakeSpec{Handshake: hsNone}, func(c *shim.Config) { c.HandshakeTimeout = 1500 * time.Millisecond })
	h := v.start(ctx)
	// Before the deadline the verdict is unknown: asking with a shorter
	// context ends the wait, and says so, without a verdict.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err := h.Handshake(short)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("verdict with a 50ms context: got %v, want the context's deadline", err)
	}
	if v, err := shimHandshakeNow(ctx, h); err != nil || v.State != shim.VerdictPending {
		t.Errorf("verdict without waiting: got %+v, %v; want pending", v, err)
	}
	if err := v.load(ctx, h); err != nil {
		t.Fatalf("snapshot load: %v", err)
	}
	verdict, err := h.Handshake(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if verdict.State != shim.VerdictFailed || !strings.Contains(verdict.Reason, "within 1.5s") || verdict.Err() == nil {
		t.Errorf("verdict: got %+v, want failed: no handshake within 1.5s", verdict)
	}
	st, err := h.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != shim.StateFailed || !strings.Contains(st.Reason, "no UFFD handshake") || st.Exit == nil || st.Exit.Signal != int(syscall.SIGKILL) {
		t.Errorf("status: got %s (%q), exit %v; want failed for the missing handshake, VMM killed", st.State, st.Reason, st.Exit)
	}
	v.finish(ctx, h)
}

// TestGarbageHandshake: bytes that are not a handshake fail the verdict,
// naming what was wrong, and kill the VMM.
func TestGarbageHandshake(t *testing.T) {
	ctx := testCtx(t)
	v := newVM(t, fakeSpec{Handshake: hsGarbage}, nil)
	h := v.start(ctx)
	// The shim kills the VMM as soon as it has read the garbage, perhaps
	// before the VMM's answer to the load is out.
	if err := v.load(ctx, h); err != nil {
		t.Logf("snapshot load (the VMM may be gone already): %v", err)
	}
	verdict, err := h.Handshake(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if verdict.State != shim.VerdictFailed || !strings.Contains(verdict.Reason, "want a JSON array") {
		t.Errorf("verdict: got %+v, want failed naming the malformed message", verdict)
	}
	st, err := h.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != shim.StateFailed || st.Exit == nil || st.Exit.Signal != int(syscall.SIGKILL) {
		t.Errorf("status: got %s, exit %v; want failed, VMM killed", st.State, st.Exit)
	}
	v.finish(ctx, h)
}

// TestPageServerFailureKillsVMM: the handshake is fine but the guest
// faults outside the announced memory, which the page server cannot
// answer; the shim kills the VMM and records why.
func TestPageServerFailureKillsVMM(t *testing.T) {
	ctx := testCtx(t)
	v := newVM(t, fakeSpec{Handshake: hsOmitRegion}, nil)
	h := v.start(ctx)
	// The guest faults outside the regions right after the handshake; the
	// VMM may be killed before its answer to the load is out.
	if err := v.load(ctx, h); err != nil {
		t.Logf("snapshot load (the VMM may be gone already): %v", err)
	}
	if verdict, err := h.Handshake(ctx); err != nil || verdict.State != shim.VerdictOK || verdict.Regions != 1 {
		t.Fatalf("verdict: got %+v, %v; want ok with 1 region", verdict, err)
	}
	st, err := h.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != shim.StateFailed || !strings.Contains(st.Reason, "outside every registered region") || st.Exit == nil || st.Exit.Signal != int(syscall.SIGKILL) {
		t.Errorf("status: got %s (%q), exit %v; want failed for the fault outside the regions, VMM killed", st.State, st.Reason, st.Exit)
	}
	v.finish(ctx, h)
}

// TestVMMExitsAtStart: Start reports the exit code and the VMM's last
// words, and leaves no shim, socket or status file behind.
func TestVMMExitsAtStart(t *testing.T) {
	ctx := testCtx(t)
	v := newVM(t, fakeSpec{ExitAtStart: 3}, nil)
	_, err := shim.Start(ctx, shimBin, v.cfg)
	var se *shim.StartError
	if !errors.As(err, &se) {
		t.Fatalf("Start: got %v, want a *StartError", err)
	}
	st := se.Status
	if st.State != shim.StateVMMExited || st.Exit == nil || st.Exit.Code != 3 || st.Exit.Signal != 0 {
		t.Errorf("status: got %s, exit %v; want vmm-exited with code 3", st.State, st.Exit)
	}
	if !strings.Contains(se.VMMLog, "configured to exit with 3") || !strings.Contains(err.Error(), "exited with code 3") {
		t.Errorf("error: got %q, want the exit code and the VMM's output", err)
	}
	if st.Handshake.State != shim.VerdictFailed {
		t.Errorf("verdict: got %+v, want failed", st.Handshake)
	}
	v.checkClean(st)
}

// TestVMMAPINeverAnswers: a VMM that runs but never serves its API fails
// the start after ReadyTimeout and is killed.
func TestVMMAPINeverAnswers(t *testing.T) {
	ctx := testCtx(t)
	v := newVM(t, fakeSpec{NoAPI: true}, func(c *shim.Config) { c.ReadyTimeout = 300 * time.Millisecond })
	_, err := shim.Start(ctx, shimBin, v.cfg)
	var se *shim.StartError
	if !errors.As(err, &se) {
		t.Fatalf("Start: got %v, want a *StartError", err)
	}
	if st := se.Status; st.State != shim.StateFailed || !strings.Contains(st.Reason, "did not answer within 300ms") || st.Exit == nil || st.Exit.Signal != int(syscall.SIGKILL) {
		t.Errorf("status: got %s (%q), exit %v; want failed, API not answering, VMM killed", st.State, st.Reason, st.Exit)
	}
	v.checkClean(se.Status)
}

// TestVMMCrashIsKept: a VMM that dies on its own is recorded with its
// signal, in the status and the status file, until collected.
func TestVMMCrashIsKept(t *testing.T) {
	for _, tt := range []struct {
		how  string
		want shim.ExitStatus
	}{
		{"crash", shim.ExitStatus{Signal: int(syscall.SIGKILL), SignalName: "SIGKILL"}},
		{"exit/5", shim.ExitStatus{Code: 5}},
		{"exit/0", shim.ExitStatus{Code: 0}},
	} {
		t.Run(tt.how, func(t *testing.T) {
			ctx := testCtx(t)
			v := newVM(t, fakeSpec{}, func(c *shim.Config) { c.Pages, c.MemFile, c.Prefetch = shim.PagesNone, "", false })
			h := v.start(ctx)
			if err := endFake(ctx, h.APISocket, tt.how); err != nil {
				t.Fatal(err)
			}
			st, err := h.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st.State != shim.StateVMMExited || st.Stopped || st.Exit == nil || *st.Exit != tt.want {
				t.Errorf("status: got %s, stopped %t, exit %+v; want vmm-exited with %+v, not stopped", st.State, st.Stopped, st.Exit, tt.want)
			}
			// Still there for a thawd that asks later, by socket or by file.
			time.Sleep(100 * time.Millisecond)
			again, err := h.Status(ctx)
			if err != nil || again.Exit == nil || *again.Exit != tt.want {
				t.Errorf("status later: got %+v, %v; want the exit kept", again, err)
			}
			file, err := shim.ReadStatusFile(v.cfg.Dir)
			if err != nil || !file.Done || file.Exit == nil || *file.Exit != tt.want {
				t.Errorf("status file: got %+v, %v; want done with the exit", file, err)
			}
			v.finish(ctx, h)
		})
	}
}

// TestStopVMMIgnoringSIGTERM: stop waits the grace period, then kills.
func TestStopVMMIgnoringSIGTERM(t *testing.T) {
	ctx := testCtx(t)
	v := newVM(t, fakeSpec{IgnoreTERM: true}, func(c *shim.Config) { c.Pages, c.MemFile, c.Prefetch = shim.PagesNone, "", false })
	h := v.start(ctx)
	const grace = 300 * time.Millisecond
	t0 := time.Now()
	st, err := h.Stop(ctx, grace)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took < grace {
		t.Errorf("stop returned after %v, before the %v grace", took, grace)
	}
	if st.State != shim.StateVMMExited || !st.Stopped || st.Exit == nil || st.Exit.Signal != int(syscall.SIGKILL) {
		t.Errorf("after stop: got state %s, stopped %t, exit %v; want vmm-exited, stopped, SIGKILL", st.State, st.Stopped, st.Exit)
	}
	v.finish(ctx, h)
}

// TestFileBackend: with pages none there is no page server: the verdict
// is none, there are no stats and no recording.
func TestFileBackend(t *testing.T) {
	ctx := testCtx(t)
	v := newVM(t, fakeSpec{}, func(c *shim.Config) { c.Pages, c.MemFile, c.Prefetch = shim.PagesNone, "", false })
	h := v.start(ctx)
	if h.UFFDSocket != "" {
		t.Errorf("UFFD socket %q with pages none", h.UFFDSocket)
	}
	if verdict, err := h.Handshake(ctx); err != nil || verdict.State != shim.VerdictNone || verdict.Err() == nil {
		t.Errorf("verdict: got %+v, %v; want none (an error for a Uffd load)", verdict, err)
	}
	if stats, err := h.Stats(ctx); err != nil || stats.Serving {
		t.Errorf("stats: got %+v, %v; want not serving", stats, err)
	}
	var apiErr *shim.APIError
	if _, err := h.Settle(ctx, false); !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusConflict {
		t.Errorf("settle without recording: got %v, want 409", err)
	}
	if _, err := h.Stop(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	v.finish(ctx, h)
}

// TestShimTerminated: SIGTERM to the shim stops the VMM and the shim exits
// without a collect, leaving the outcome in the status file.
func TestShimTerminated(t *testing.T) {
	ctx := testCtx(t)
	v := newVM(t, fakeSpec{}, func(c *shim.Config) { c.Pages, c.MemFile, c.Prefetch = shim.PagesNone, "", false })
	h := v.start(ctx)
	if err := unix.Kill(h.PID, unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitExit(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := shim.ReadStatusFile(v.cfg.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != shim.StateVMMExited || !st.Stopped || !st.Done || st.Collected || st.Exit == nil || st.Exit.SignalName != "SIGTERM" {
		t.Errorf("status file: got %+v, want vmm-exited, stopped, done, not collected, SIGTERM", st)
	}
	if alive(st.VMMPID) {
		t.Errorf("VMM %d alive after its shim left", st.VMMPID)
	}
	for _, name := range []string{shim.ControlSocketName, shim.APISocketName, shim.UFFDSocketName} {
		if _, err := os.Lstat(filepath.Join(v.cfg.Dir, name)); err == nil {
			t.Errorf("%s left behind", name)
		}
	}
}

// launchDetached starts a shim for cfg through a launcher process (the
// test binary re-executed, standing in for thawd), then kills the
// launcher with SIGKILL, and returns the shim's pid; the shim is killed
// when the test ends.
func launchDetached(t *testing.T, cfg shim.Config) int {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(launchSpec{Binary: shimBin, Config: cfg})
	launcher := exec.Command(exe)
	launcher.Env = append(os.Environ(), launcherEnv+"="+string(js))
	out, err := launcher.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := launcher.Start(); err != nil {
		t.Fatal(err)
	}
	killOnCleanup(t, launcher.Process.Pid)
	line, err := bufio.NewReader(out).ReadString('\n')
	launcher.Process.Kill()
	launcher.Wait()
	if err != nil {
		t.Fatalf("launcher: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("launcher said %q", line)
	}
	killOnCleanup(t, pid)
	return pid
}

// TestShimSurvivesParentKill: a thawd stand-in starts the shim and is
// killed with SIGKILL; the shim, in its own session, runs on, is attached
// to again, and serves its VM's memory.
func TestShimSurvivesParentKill(t *testing.T) {
	ctx := testCtx(t)
	v := newVM(t, fakeSpec{Handshake: hsOK}, nil)
	pid := launchDetached(t, v.cfg)

	h, err := shim.Attach(ctx, v.cfg.ControlSocket())
	if err != nil {
		t.Fatalf("Attach after the parent died: %v", err)
	}
	defer h.Close()
	if h.PID != pid || h.ID != v.cfg.ID {
		t.Fatalf("attached to pid %d (%s), want %d (%s)", h.PID, h.ID, pid, v.cfg.ID)
	}
	if sid, err := unix.Getsid(pid); err != nil || sid != pid {
		t.Errorf("shim session: got %d, %v; want its own (%d)", sid, err, pid)
	}
	st, err := h.Status(ctx)
	if err != nil || st.State != shim.StateRunning {
		t.Fatalf("status after the parent died: got %+v, %v; want running", st, err)
	}
	killOnCleanup(t, st.VMMPID)
	if err := v.load(ctx, h); err != nil {
		t.Fatalf("snapshot load: %v", err)
	}
	if verdict, err := h.Handshake(ctx); err != nil || verdict.Err() != nil {
		t.Fatalf("verdict: got %+v, %v; want ok", verdict, err)
	}
	var rep fakeReport
	eventually(t, "the guest touching every page", func() (bool, error) {
		rep, err = fakeReportOf(ctx, h.APISocket)
		return rep.Done, err
	})
	if rep.Mismatches != 0 {
		t.Fatalf("guest: %d mismatches (%s)", rep.Mismatches, rep.FirstBad)
	}
	if _, err := h.Stop(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	v.finish(ctx, h)
}

// TestRecording: a recording run writes each touched page once, in the
// order touched, and reports settling.
func TestRecording(t *testing.T) {
	ctx := testCtx(t)
	rng := rand.New(rand.NewPCG(3, 4))
	touch := rng.Perm(memSize / 4096)[:100]
	recLog := filepath.Join(t.TempDir(), "access.log")
	v := newVM(t, fakeSpec{Handshake: hsOK, Touch: touch}, func(c *shim.Config) {
		c.Pages, c.Prefetch, c.RecordLog = shim.PagesRecord, false, recLog
		c.SettleMin, c.SettleMax = 300*time.Millisecond, 10*time.Second
	})
	h := v.start(ctx)
	if err := v.load(ctx, h); err != nil {
		t.Fatalf("snapshot load: %v", err)
	}
	if verdict, err := h.Handshake(ctx); err != nil || verdict.Err() != nil {
		t.Fatalf("verdict: got %+v, %v; want ok", verdict, err)
	}
	eventually(t, "the guest touching its pages", func() (bool, error) {
		rep, err := fakeReportOf(ctx, h.APISocket)
		return rep.Done, err
	})
	settle, err := h.Settle(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if !settle.Settled || settle.Pages != len(touch) || settle.Error != "" {
		t.Errorf("settle: got %+v, want settled with %d pages", settle, len(touch))
	}
	if stats, err := h.Stats(ctx); err != nil || stats.PrefetchedPages != 0 || stats.FaultPages != uint64(len(touch)) || stats.Prefetch != shim.PrefetchOff {
		t.Errorf("stats: got %+v, %v; want %d fault pages, none prefetched, prefetch off", stats, err, len(touch))
	}
	if _, err := h.Stop(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	v.finish(ctx, h)
	f, err := os.Open(recLog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	l, err := uffd.ReadAccessLog(f)
	if err != nil {
		t.Fatal(err)
	}
	var want []uint64
	for _, p := range touch {
		want = append(want, uint64(p)*4096)
	}
	if !slices.Equal(l.Offsets, want) {
		t.Errorf("recorded %d offsets, want the %d touched in order", len(l.Offsets), len(want))
	}

	// Replay: a shim serving with this log prefetches exactly its pages.
	replay := newVM(t, fakeSpec{Handshake: hsOK, Touch: touch[:1]}, func(c *shim.Config) { c.AccessLog = recLog })
	if err := os.Rename(v.memFile, replay.memFile); err != nil { // the same memory file
		t.Fatal(err)
	}
	h = replay.start(ctx)
	if err := replay.load(ctx, h); err != nil {
		t.Fatalf("snapshot load: %v", err)
	}
	if verdict, err := h.Handshake(ctx); err != nil || verdict.Err() != nil {
		t.Fatalf("verdict: got %+v, %v; want ok", verdict, err)
	}
	var stats shim.PageStats
	eventually(t, "prefetch done", func() (bool, error) {
		stats, err = h.Stats(ctx)
		return stats.PrefetchDone, err
	})
	if got := stats.PrefetchedPages + stats.FaultPages; got != uint64(len(touch)) {
		t.Errorf("replay installed %d pages (%d prefetched, %d on fault), want the %d recorded", got, stats.PrefetchedPages, stats.FaultPages, len(touch))
	}
	if stats.Prefetch != shim.PrefetchOrdered || stats.OrderPages != len(touch) {
		t.Errorf("replay: got prefetch %q with %d ordered pages, want %q with %d", stats.Prefetch, stats.OrderPages, shim.PrefetchOrdered, len(touch))
	}
	if _, err := h.Stop(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	replay.finish(ctx, h)
}

// shimHandshakeNow asks for the verdict without waiting (?wait=false).
func shimHandshakeNow(ctx context.Context, h *shim.Handle) (shim.Verdict, error) {
	var v shim.Verdict
	code, body, err := rawCall(ctx, h, http.MethodGet, "/handshake?wait=false", "")
	if err != nil {
		return v, err
	}
	if code != http.StatusOK {
		return v, fmt.Errorf("status %d: %s", code, body)
	}
	return v, json.Unmarshal([]byte(body), &v)
}

// rawCall sends one request to the shim's control socket and returns the
// status code and body.
func rawCall(ctx context.Context, h *shim.Handle, method, path, body string) (int, string, error) {
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", h.SocketPath())
	}}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, method, "http://shim"+path, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestControlRefusesBadRequests: the control API names what was wrong.
func TestControlRefusesBadRequests(t *testing.T) {
	ctx := testCtx(t)
	v := newVM(t, fakeSpec{}, func(c *shim.Config) { c.Pages, c.MemFile, c.Prefetch = shim.PagesNone, "", false })
	h := v.start(ctx)
	tests := []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"GET", "/nope", "", 404, "no route GET /nope"},
		{"POST", "/info", "", 404, "no route POST /info"},
		{"GET", "/handshake?wait=maybe", "", 400, "wait=\"maybe\""},
		{"POST", "/stop", `{"grace":1}`, 400, "unknown field"},
		{"POST", "/stop", `{"grace_ms":-5}`, 400, "grace_ms -5"},
		{"POST", "/collect", "", 409, "still running"},
	}
	for _, tt := range tests {
		code, body, err := rawCall(ctx, h, tt.method, tt.path, tt.body)
		if err != nil {
			t.Fatal(err)
		}
		var e struct{ Error string }
		json.Unmarshal([]byte(body), &e)
		if code != tt.code || !strings.Contains(e.Error, tt.want) {
			t.Errorf("%s %s %s: got %d %q, want %d with an error containing %q", tt.method, tt.path, tt.body, code, body, tt.code, tt.want)
		}
	}
	if st, err := h.Status(ctx); err != nil || st.State != shim.StateRunning || st.Stopped {
		t.Errorf("after the bad requests: got %+v, %v; want running, not stopped", st, err)
	}
	if _, err := h.Stop(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	v.finish(ctx, h)
}

// TestCollectTimeout: a shim nobody collects leaves after CollectTimeout,
// removing its sockets and keeping the outcome in the status file.
func TestCollectTimeout(t *testing.T) {
	ctx := testCtx(t)
	v := newVM(t, fakeSpec{}, func(c *shim.Config) {
		c.Pages, c.MemFile, c.Prefetch = shim.PagesNone, "", false
		c.CollectTimeout = 300 * time.Millisecond
	})
	h := v.start(ctx)
	if err := crashFake(ctx, h.APISocket); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitExit(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := shim.ReadStatusFile(v.cfg.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Done || st.Collected || st.State != shim.StateVMMExited || st.Exit == nil || st.Exit.SignalName != "SIGKILL" {
		t.Errorf("status file: got %+v, want done, not collected, VMM killed by SIGKILL", st)
	}
	for _, name := range []string{shim.ControlSocketName, shim.APISocketName} {
		if _, err := os.Lstat(filepath.Join(v.cfg.Dir, name)); err == nil {
			t.Errorf("%s left behind", name)
		}
	}
	if _, err := h.Status(ctx); !errors.Is(err, shim.ErrUnavailable) {
		t.Errorf("status from a shim that left: got %v, want ErrUnavailable", err)
	}
}

// TestTruncatedMemoryFile: a memory file cut short fails the start before
// any VMM runs, saying what is wrong with the file.
func TestTruncatedMemoryFile(t *testing.T) {
	ctx := testCtx(t)
	v := newVM(t, fakeSpec{Handshake: hsOK}, nil)
	if err := os.Truncate(v.memFile, memSize-100); err != nil {
		t.Fatal(err)
	}
	_, err := shim.Start(ctx, shimBin, v.cfg)
	var se *shim.StartError
	if !errors.As(err, &se) {
		t.Fatalf("Start: got %v, want a *StartError", err)
	}
	if st := se.Status; st.State != shim.StateFailed || !strings.Contains(st.Reason, "not a whole number of 4 KiB pages") || st.VMMPID != 0 || st.Exit != nil {
		t.Errorf("status: got %s (%q), vmm pid %d, exit %v; want failed naming the truncated file, no VMM", st.State, st.Reason, st.VMMPID, st.Exit)
	}
	v.checkClean(se.Status)
}

// TestSecondShimRefused: a second shim for a directory a shim serves
// refuses to start and leaves the first one and its sockets alone.
func TestSecondShimRefused(t *testing.T) {
	ctx := testCtx(t)
	v := newVM(t, fakeSpec{}, func(c *shim.Config) { c.Pages, c.MemFile, c.Prefetch = shim.PagesNone, "", false })
	h := v.start(ctx)
	_, err := shim.Start(ctx, shimBin, v.cfg)
	if err == nil || !strings.Contains(err.Error(), "another shim") {
		t.Fatalf("second Start: got %v, want a refusal naming the running shim", err)
	}
	// The shim itself refuses too (two Starts can race past that check).
	cmd := exec.Command(shimBin, v.cfg.Args()...)
	out, err := cmd.CombinedOutput()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); err == nil || !ok || ws.ExitStatus() != 1 || !strings.Contains(string(out), "another shim is serving") {
		t.Errorf("second thaw-shim: got %v, %q; want exit 1 naming the running shim", err, out)
	}
	if st, err := h.Status(ctx); err != nil || st.State != shim.StateRunning {
		t.Fatalf("first shim after the refusal: got %+v, %v; want running", st, err)
	}
	if _, err := h.Stop(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	v.finish(ctx, h)
}

// TestStartContextEnds: a Start whose context ends while the VMM is
// starting (its API never answers) kills the shim and its VMM and leaves
// nothing behind.
func TestStartContextEnds(t *testing.T) {
	ctx := testCtx(t)
	v := newVM(t, fakeSpec{NoAPI: true}, nil)
	startCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := shim.Start(startCtx, shimBin, v.cfg)
		errc <- err
	}()
	// End the context once the VMM runs, as the status file shows.
	var st shim.Status
	eventually(t, "the VMM started", func() (bool, error) {
		var err error
		st, err = shim.ReadStatusFile(v.cfg.Dir)
		return err == nil && st.VMMPID != 0, nil
	})
	killOnCleanup(t, st.ShimPID)
	killOnCleanup(t, st.VMMPID)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Start: got %v, want the context's cancellation", err)
	}
	eventually(t, "the VMM dying with its shim", func() (bool, error) { return !alive(st.VMMPID), nil })
	if alive(st.ShimPID) {
		t.Errorf("shim %d alive after Start gave up", st.ShimPID)
	}
	v.checkClean(shim.Status{})
}

// TestVMMBinaryMissing: a VMM that cannot be executed fails the start with
// the reason.
func TestVMMBinaryMissing(t *testing.T) {
	ctx := testCtx(t)
	v := newVM(t, fakeSpec{}, func(c *shim.Config) {
		c.Pages, c.MemFile, c.Prefetch = shim.PagesNone, "", false
		c.VMM = "/nonexistent/firecracker"
	})
	_, err := shim.Start(ctx, shimBin, v.cfg)
	var se *shim.StartError
	if !errors.As(err, &se) || se.Status.State != shim.StateFailed || !strings.Contains(se.Status.Reason, "/nonexistent/firecracker") {
		t.Fatalf("Start: got %v, want a failed start naming the missing binary", err)
	}
	v.checkClean(se.Status)
}

// TestShimKilled: a shim killed with SIGKILL takes its VMM with it
// (PDEATHSIG: a VMM without its page server would freeze), its status file
// names the dead pid, and a new shim starts in the same directory over the
// stale sockets.
func TestShimKilled(t *testing.T) {
	ctx := testCtx(t)
	v := newVM(t, fakeSpec{Handshake: hsOK}, nil)
	h := v.start(ctx)
	st, err := h.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Kill(h.PID, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitExit(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the VMM dying with its shim", func() (bool, error) { return !alive(st.VMMPID), nil })
	file, err := shim.ReadStatusFile(v.cfg.Dir)
	if err != nil || file.ShimPID != h.PID || file.Done {
		t.Errorf("status file of a killed shim: got %+v, %v; want shim pid %d, not done", file, err, h.PID)
	}
	if _, err := os.Lstat(v.cfg.ControlSocket()); err != nil {
		t.Fatalf("the killed shim's control socket: %v (expected a stale one)", err)
	}
	h2 := v.start(ctx)
	if err := v.load(ctx, h2); err != nil {
		t.Fatalf("snapshot load under the new shim: %v", err)
	}
	if verdict, err := h2.Handshake(ctx); err != nil || verdict.Err() != nil {
		t.Fatalf("verdict: got %+v, %v; want ok", verdict, err)
	}
	if _, err := h2.Stop(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	v.finish(ctx, h2)
}

// TestProcsAreTheShimsOwn: --procs sets the shim's GOMAXPROCS through its
// environment, and a child VMM binary does not inherit it (it sizes its
// own Ps).
func TestProcsAreTheShimsOwn(t *testing.T) {
	ctx := testCtx(t)
	v := newVM(t, fakeSpec{Handshake: hsOK}, func(c *shim.Config) { c.Procs = 1 })
	h := v.start(ctx)
	st, err := h.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	gomaxprocs := func(pid int) string {
		t.Helper()
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			t.Fatal(err)
		}
		for kv := range strings.SplitSeq(string(env), "\x00") {
			if v, ok := strings.CutPrefix(kv, "GOMAXPROCS="); ok {
				return v
			}
		}
		return ""
	}
	if got := gomaxprocs(h.PID); got != "1" {
		t.Errorf("shim's GOMAXPROCS: got %q, want \"1\"", got)
	}
	if got := gomaxprocs(st.VMMPID); got != "" {
		t.Errorf("child VMM's GOMAXPROCS: got %q, want it unset (the shim's --procs is not the VMM's)", got)
	}
	if _, err := h.Stop(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	v.finish(ctx, h)
}
