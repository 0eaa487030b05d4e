package nested

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/conf"
	"github.com/thawvm/thaw/internal/testenv"
)

var (
	hostOnce   sync.Once
	hostDirect bool
	hostWhy    string
)

// HostRunsLinuxGuests reports whether this host's /dev/kvm runs a normal
// Linux guest, and why. It asks once per process: /dev/kvm must open and be
// backed by hardware virtualisation (kvm_intel or kvm_amd); kvm_pvm runs
// only PVM-built guest kernels, which we cannot ship.
func HostRunsLinuxGuests() (bool, string) {
	hostOnce.Do(func() { hostDirect, hostWhy = probeHost("/sys/module") })
	return hostDirect, hostWhy
}

func probeHost(modules string) (bool, string) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false, fmt.Sprintf("no usable /dev/kvm (%v)", err)
	}
	f.Close()
	if _, err := os.Stat(filepath.Join(modules, "kvm_pvm")); err == nil {
		return false, "/dev/kvm is kvm_pvm, which runs only PVM-built guest kernels"
	}
	for _, m := range []string{"kvm_intel", "kvm_amd"} {
		if _, err := os.Stat(filepath.Join(modules, m)); err == nil {
			return true, "/dev/kvm is hardware KVM (" + m + ")"
		}
	}
	return false, "/dev/kvm is backed by neither kvm_intel nor kvm_amd"
}

// RunWhereGuestsRun runs p directly when this host's KVM runs normal Linux
// guests and in L1 otherwise, logging which path it took and why: the
// choice the README's main job and nested.Test make.
func (h *Harness) RunWhereGuestsRun(ctx context.Context, p Payload, workDir string) (*Result, error) {
	direct, why := HostRunsLinuxGuests()
	if direct {
		h.log.Info("running directly on this host", "why", why)
		return RunDirect(ctx, p, workDir)
	}
	h.log.Info("this host cannot run a normal Linux guest: running in the nested harness (L1 under QEMU)", "why", why)
	return h.Run(ctx, p, workDir)
}

// WorkDirEnv names a directory where Test keeps each nested run's disks,
// serial logs and result files (normally removed with the test's temporary
// directory), for debugging a failure after the fact.
const WorkDirEnv = "THAW_NESTED_WORKDIR"

// NestedPagingEnv, a boolean (internal/conf), sets Config.NestedPaging in
// Test and thaw-nested: 1 keeps L1's kvm_amd with nested paging instead of
// the default shadow paging, to compare the two or to check a newer QEMU.
const NestedPagingEnv = "THAW_NESTED_PAGING"

// TimeoutScaleEnv multiplies the harness's step timeouts in tests, for
// machines even slower or busier than the defaults allow for.
const TimeoutScaleEnv = "THAW_NESTED_TIMEOUT_SCALE"

// Test runs p where a normal Linux guest can run, and returns what came back:
// directly on this host when its KVM runs such guests, otherwise in L1 under
// the nested harness. The test body (the payload) is the same either way and
// the log says which path ran. Like testenv.RequireKVM, it skips when
// neither path is available, or fails under THAW_REQUIRE_KVM=1. Setup
// errors and hangs fail t; a non-zero exit code is the caller's to judge.
func Test(t testing.TB, p Payload) *Result {
	t.Helper()
	testenv.RequireKVM(t)
	if err := checkPayload(p.Dir); err != nil {
		t.Fatal(err)
	}
	direct, why := HostRunsLinuxGuests()
	if direct {
		t.Logf("running the payload directly on this host: %s", why)
		r, err := RunDirect(t.Context(), p, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	t.Logf("running the payload in the nested harness (L1 under QEMU): %s", why)
	if m := MissingTools(); len(m) > 0 {
		missing(t, fmt.Sprintf("the nested harness needs %s: run scripts/setup", strings.Join(m, ", ")))
	}
	var cfg Config
	npt, err := conf.EnvBool(NestedPagingEnv, false)
	if err != nil {
		t.Fatal(err)
	}
	cfg.NestedPaging = npt
	if v := os.Getenv(TimeoutScaleEnv); v != "" {
		scale, err := strconv.ParseFloat(v, 64)
		if err != nil || scale <= 0 {
			t.Fatalf("%s=%q: want a positive number", TimeoutScaleEnv, v)
		}
		cfg.setDefaults()
		for _, d := range []*time.Duration{&cfg.Timeouts.Boot, &cfg.Timeouts.Setup, &cfg.Timeouts.Payload, &cfg.Timeouts.Shutdown} {
			*d = time.Duration(float64(*d) * scale)
		}
	}
	h, err := New(cfg, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	if keep := os.Getenv(WorkDirEnv); keep != "" {
		name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
		work = filepath.Join(keep, name+"-"+time.Now().Format("20060102-150405"))
		if err := os.MkdirAll(work, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Logf("keeping the nested run's files in %s (%s)", work, WorkDirEnv)
	}
	r, err := h.Run(t.Context(), p, work)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("nested: L1 %s paging, attempts %d, QEMU start → /dev/kvm ready %v, payload %v, total %v",
		r.Paging, r.Attempts, r.KVMReady.Round(time.Millisecond), r.Run.Round(time.Millisecond), r.Total.Round(time.Millisecond))
	return r
}

// GoTestPayload compiles the tests of the Go package pkg (an import path)
// into a static binary and returns a payload that runs them with
// THAW_REQUIRE_KVM=1, so a test that would skip for want of KVM fails
// instead. testArgs go to the test binary (-test.v is always passed).
func GoTestPayload(t testing.TB, pkg string, testArgs ...string) Payload {
	t.Helper()
	dir := t.TempDir()
	build := exec.CommandContext(t.Context(), "go", "test", "-c", "-o", filepath.Join(dir, "pkg.test"), pkg)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("compiling the tests of %s: %v\n%s", pkg, err, out)
	}
	var quoted []string
	for _, a := range append([]string{"-test.v"}, testArgs...) {
		quoted = append(quoted, "'"+strings.ReplaceAll(a, "'", `'\''`)+"'")
	}
	script := "#!/bin/sh\n# " + pkg + "\nexport " + testenv.StrictEnv + "=1\nexec ./pkg.test " + strings.Join(quoted, " ") + "\n"
	if err := os.WriteFile(filepath.Join(dir, "run"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return Payload{Dir: dir}
}

// GuestKernel returns the path of the cached guest kernel (guest/kernel),
// for tests that boot it. An empty cache skips t, except under
// THAW_REQUIRE_KVM=1 (CI), where the kernel is built first: several
// minutes, once per config, so such a test needs a long go test -timeout.
func GuestKernel(t testing.TB) string {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	path, cached, err := GuestKernelPath(t.Context(), root)
	if err != nil {
		t.Fatal(err)
	}
	if cached {
		return path
	}
	strict, err := testenv.Strict()
	if err != nil {
		t.Fatal(err)
	}
	if !strict {
		t.Skipf("guest kernel not built yet (%s): run guest/kernel/build (7 minutes on an idle machine, far more on a busy one)", path)
	}
	t.Logf("building the guest kernel into %s (%s=1 forbids skipping)", path, testenv.StrictEnv)
	if path, err = BuildGuestKernel(t.Context(), root, testWriter{t}); err != nil {
		t.Fatal(err)
	}
	return path
}

// BusyboxInitramfs builds a gzipped initramfs for a guest: busybox-static
// as /bin/busybox and init, a busybox sh script, as /init. It returns the
// archive's path, in t's temporary directory.
func BusyboxInitramfs(t testing.TB, init string) string {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	for _, d := range []string{"bin", "dev", "proc", "sys", "mnt", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := copyFile(busybox, filepath.Join(root, "bin/busybox")); err != nil {
		t.Fatalf("%v: install busybox-static (scripts/setup)", err)
	}
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(init), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "initrd.cpio.gz")
	if err := packCPIO(t.Context(), root, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// RunDirect runs p's run script on this host, as L1 would: its directory
// as the working directory, THAW_RESULTS a fresh directory under workDir.
func RunDirect(ctx context.Context, p Payload, workDir string) (*Result, error) {
	if err := checkPayload(p.Dir); err != nil {
		return nil, err
	}
	timeout := p.Timeout
	if timeout == 0 {
		timeout = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	files := filepath.Join(workDir, "out")
	if err := os.MkdirAll(files, 0o755); err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(p.Dir)
	if err != nil {
		return nil, err
	}
	// Output goes to a file, not a pipe: a process run leaves behind would
	// hold a pipe open and keep us waiting. Leftovers are killed with run's
	// process group, as L1's init kills them.
	outPath := filepath.Join(workDir, "output")
	out, err := os.Create(outPath)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	cmd := exec.CommandContext(ctx, filepath.Join(abs, "run"))
	cmd.Dir = abs
	cmd.Env = append(os.Environ(), "THAW_RESULTS="+files)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	start := time.Now()
	err = cmd.Start()
	if err == nil {
		err = cmd.Wait()
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // ESRCH when nothing is left
	}
	r := &Result{Files: files, Run: time.Since(start), Total: time.Since(start), Attempts: 1}
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return nil, fmt.Errorf("payload %s did not finish in %v: %w", p.Dir, timeout, ctx.Err())
	case errors.As(err, &exit):
		r.ExitCode = exit.ExitCode()
	case err != nil:
		return nil, fmt.Errorf("running payload %s: %w", p.Dir, err)
	}
	if r.Output, err = os.ReadFile(outPath); err != nil {
		return nil, fmt.Errorf("reading the payload's output: %w", err)
	}
	return r, nil
}

// missing skips t, or fails it under THAW_REQUIRE_KVM=1, as testenv does.
func missing(t testing.TB, why string) {
	t.Helper()
	strict, err := testenv.Strict()
	if err != nil {
		t.Fatal(err)
	}
	if strict {
		t.Fatalf("%s (and %s=1 forbids skipping)", why, testenv.StrictEnv)
	}
	t.Skip(why)
}

// testWriter sends the harness's log lines to the test log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
