package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/thawvm/thaw/guest/probe"
	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/testenv"
)

// guestWait bounds every wait for a guest's output or exit. Probe guests run
// emulated on PVM hosts and share two cores with the rest of the suite, so
// this is a hang detector, not a speed claim: a loaded machine has taken 28 s
// for a step that is instant on hardware KVM.
const guestWait = 2 * time.Minute

var (
	buildOnce sync.Once
	vmmBin    string
	buildErr  error
)

// thawVMM builds cmd/thaw-vmm once per test binary.
func thawVMM(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "thaw-e2e-")
		if err != nil {
			buildErr = err
			return
		}
		vmmBin = filepath.Join(dir, "thaw-vmm")
		out, err := exec.Command("go", "build", "-o", vmmBin, "github.com/thawvm/thaw/cmd/thaw-vmm").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build thaw-vmm: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return vmmBin
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(pageServerEnv); spec != "" { // snapshot_test.go
		os.Exit(pageServerChild(spec))
	}
	code := m.Run()
	if vmmBin != "" {
		os.RemoveAll(filepath.Dir(vmmBin))
	}
	os.Exit(code)
}

func probeELF(t testing.TB) string {
	t.Helper()
	p, err := probe.Build(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// syncBuffer collects a process's output as it arrives.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// vmmProc is a running thaw-vmm.
type vmmProc struct {
	cmd    *exec.Cmd
	sock   string
	stdout *syncBuffer
	stderr *syncBuffer
	done   chan struct{}
	err    error // the process's exit, once done is closed
}

// startVMM runs thaw-vmm with args (plus --api-sock unless --no-api is
// among them) and kills it when the test ends.
func startVMM(t *testing.T, args ...string) *vmmProc {
	t.Helper()
	testenv.RequireKVM(t)
	p := &vmmProc{stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	dir := t.TempDir()
	if !contains(args, "--no-api") {
		p.sock = filepath.Join(dir, "api.sock")
		args = append([]string{"--api-sock", p.sock}, args...)
	}
	p.cmd = exec.Command(thawVMM(t), args...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("thaw-vmm stderr:\n%s", p.stderr.String())
		}
	})
	return p
}

func contains(args []string, s string) bool {
	for _, a := range args {
		if a == s {
			return true
		}
	}
	return false
}

func (p *vmmProc) client(t *testing.T) *fcapi.Client {
	t.Helper()
	c := fcapi.NewClient(p.sock)
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatalf("API socket not ready: %v\nstderr:\n%s", err, p.stderr.String())
	}
	return c
}

// wait waits for the process to exit and returns its exit code.
func (p *vmmProc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("thaw-vmm still running after %v; stdout:\n%s", timeout, p.stdout.String())
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatal(p.err)
	}
	return 0
}

func (p *vmmProc) waitOutput(t *testing.T, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(p.stdout.String(), want) {
		select {
		case <-p.done:
			t.Fatalf("thaw-vmm exited (%v) before printing %q; stdout:\n%s\nstderr:\n%s", p.err, want, p.stdout.String(), p.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q after %v; stdout:\n%s", want, timeout, p.stdout.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), guestWait)
	t.Cleanup(cancel)
	return c
}

// TestProbeThroughAPI configures and starts the probe guest through the
// API as thawd would, checks GET / and GET /machine-config, pauses and
// resumes it, and ends it with SendCtrlAltDel: the process must exit 0.
func TestProbeThroughAPI(t *testing.T) {
	p := startVMM(t, "--id", "e2e_probe")
	c := p.client(t)
	info, err := c.InstanceInfo(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != "e2e_probe" || info.State != fcapi.StateNotStarted {
		t.Errorf("GET / before start: got %+v, want id e2e_probe, state %q", info, fcapi.StateNotStarted)
	}
	if err := c.PutBootSource(ctx(t), fcapi.BootSource{KernelImagePath: probeELF(t), BootArgs: "console=ttyS0 probe.pages=16 probe.ticks=0 probe.spin=2000"}); err != nil {
		t.Fatal(err)
	}
	if err := c.PutMachineConfig(ctx(t), fcapi.MachineConfig{VcpuCount: 2, MemSizeMib: 64}); err != nil {
		t.Fatal(err)
	}
	mc, err := c.MachineConfig(ctx(t))
	if err != nil || mc.VcpuCount != 2 || mc.MemSizeMib != 64 {
		t.Errorf("GET /machine-config: got %+v, %v, want 2 vCPUs and 64 MiB", mc, err)
	}
	if err := c.InstanceStart(ctx(t)); err != nil {
		t.Fatal(err)
	}
	p.waitOutput(t, "probe: tick 1 ", guestWait)
	if err := c.Pause(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if info, err := c.InstanceInfo(ctx(t)); err != nil || info.State != fcapi.StatePaused {
		t.Errorf("GET / after pause: got %+v, %v, want state %q", info, err, fcapi.StatePaused)
	}
	before := p.stdout.String()
	time.Sleep(100 * time.Millisecond)
	if after := p.stdout.String(); after != before {
		t.Errorf("guest printed while paused: %q", strings.TrimPrefix(after, before))
	}
	if err := c.Resume(ctx(t)); err != nil {
		t.Fatal(err)
	}
	n := strings.Count(before, "probe: tick ")
	p.waitOutput(t, fmt.Sprintf("probe: tick %d ", n+1), guestWait)
	// A pre-boot call on a running VM is refused with Firecracker's 400.
	var apiErr *fcapi.APIError
	if err := c.PutMachineConfig(ctx(t), fcapi.MachineConfig{VcpuCount: 1, MemSizeMib: 64}); !errors.As(err, &apiErr) || apiErr.StatusCode != 400 {
		t.Errorf("PUT /machine-config while running: got %v, want a 400", err)
	}
	if err := c.SendCtrlAltDel(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, guestWait); code != 0 {
		t.Errorf("exit code after the guest reset: got %d, want 0", code)
	}
	if !strings.Contains(p.stdout.String(), "probe: ctrl-alt-del") {
		t.Errorf("guest never saw Ctrl+Alt+Del; stdout:\n%s", p.stdout.String())
	}
	if _, err := os.Stat(p.sock); !os.IsNotExist(err) {
		t.Errorf("API socket left behind after exit: %v", err)
	}
}

// TestConfigFile boots the probe with --no-api --config-file, as an
// API-less Firecracker boot; the guest resets itself after three ticks and
// the process exits 0.
func TestConfigFile(t *testing.T) {
	cfg := map[string]any{
		"boot-source":    map[string]any{"kernel_image_path": probeELF(t), "boot_args": "probe.pages=4 probe.ticks=3 probe.spin=100"},
		"drives":         []any{},
		"machine-config": map[string]any{"vcpu_count": 1, "mem_size_mib": 32},
	}
	b, _ := json.Marshal(cfg)
	path := filepath.Join(t.TempDir(), "vm.json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	p := startVMM(t, "--no-api", "--config-file", path)
	if code := p.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("exit code: got %d, want 0; stderr:\n%s", code, p.stderr.String())
	}
	for _, want := range []string{"probe: tick 3 ", "probe: done"} {
		if !strings.Contains(p.stdout.String(), want) {
			t.Errorf("no %q in stdout:\n%s", want, p.stdout.String())
		}
	}
}

// TestBadInvocations checks that mistakes end the process with status 1
// and a message saying what is wrong.
func TestBadInvocations(t *testing.T) {
	dir := t.TempDir()
	badJSON := filepath.Join(dir, "bad.json")
	os.WriteFile(badJSON, []byte(`{"boot-source": {"kernel_image_path": "/nonexistent/vmlinux"}, "drives": []}`), 0o644)
	existing := filepath.Join(dir, "taken.sock")
	os.WriteFile(existing, nil, 0o644)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no-api without config", []string{"--no-api"}, "--no-api needs --config-file"},
		{"missing config file", []string{"--no-api", "--config-file", filepath.Join(dir, "none.json")}, "no such file"},
		{"missing kernel", []string{"--no-api", "--config-file", badJSON}, "/nonexistent/vmlinux"},
		{"socket exists", []string{"--api-sock", existing}, "already exists"},
		{"bad level", []string{"--no-api", "--config-file", badJSON, "--level", "loud"}, "--level"},
		{"stray argument", []string{"vmlinux"}, "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(thawVMM(t), tt.args...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("got %v, want exit status 1", err)
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("stderr %q does not mention %q", stderr.String(), tt.want)
			}
		})
	}
}

// TestSignalAndStdin feeds the guest's serial port through thaw-vmm's
// stdin, then stops the VMM with SIGTERM: it must exit 0 and remove its
// API socket.
func TestSignalAndStdin(t *testing.T) {
	testenv.RequireKVM(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	cmd := exec.Command(thawVMM(t), "--api-sock", sock)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &vmmProc{cmd: cmd, sock: sock, stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-p.done })
	c := p.client(t)
	if err := c.PutBootSource(ctx(t), fcapi.BootSource{KernelImagePath: probeELF(t), BootArgs: "probe.pages=1 probe.ticks=0 probe.spin=1000"}); err != nil {
		t.Fatal(err)
	}
	if err := c.InstanceStart(ctx(t)); err != nil {
		t.Fatal(err)
	}
	p.waitOutput(t, "probe: tick 1 ", guestWait)
	if _, err := stdin.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	p.waitOutput(t, "probe: serial 6f\nprobe: serial 6b\n", guestWait)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, guestWait); code != 0 {
		t.Errorf("exit code after SIGTERM: got %d, want 0; stderr:\n%s", code, p.stderr.String())
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("API socket left behind after SIGTERM: %v", err)
	}
}
