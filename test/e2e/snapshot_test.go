package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/testenv"
	"github.com/thawvm/thaw/internal/uffd"
	"github.com/thawvm/thaw/internal/uffd/uffdtest"
)

var tickLine = regexp.MustCompile(`probe: tick (\d+) sum=([0-9a-f]+)\n`)

// snapshotProbe boots the probe in a thaw-vmm, pauses it after a few ticks
// and snapshots it through the API into dir; it returns the paths and the
// last tick and sum the guest printed.
func snapshotProbe(t *testing.T, dir string) (statePath, memPath string, tick int, sum string) {
	t.Helper()
	return snapshotProbeWith(t, dir, "probe.pages=64 probe.ticks=0 probe.spin=2000")
}

// snapshotProbeWith is snapshotProbe with the probe's boot arguments.
func snapshotProbeWith(t *testing.T, dir, bootArgs string) (statePath, memPath string, tick int, sum string) {
	t.Helper()
	p := startVMM(t, "--id", "template")
	c := p.client(t)
	if err := c.PutBootSource(ctx(t), fcapi.BootSource{KernelImagePath: probeELF(t), BootArgs: bootArgs}); err != nil {
		t.Fatal(err)
	}
	if err := c.PutMachineConfig(ctx(t), fcapi.MachineConfig{VcpuCount: 2, MemSizeMib: 64}); err != nil {
		t.Fatal(err)
	}
	if err := c.InstanceStart(ctx(t)); err != nil {
		t.Fatal(err)
	}
	p.waitOutput(t, "probe: tick 2 ", guestWait)
	statePath, memPath = filepath.Join(dir, "vmstate"), filepath.Join(dir, "mem")
	create := fcapi.SnapshotCreateParams{SnapshotType: fcapi.SnapshotFull, SnapshotPath: statePath, MemFilePath: memPath}
	var apiErr *fcapi.APIError
	if err := c.CreateSnapshot(ctx(t), create); !errors.As(err, &apiErr) || apiErr.StatusCode != 400 {
		t.Errorf("PUT /snapshot/create on a running VM: got %v, want a 400", err)
	}
	if err := c.Pause(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateSnapshot(ctx(t), create); err != nil {
		t.Fatal(err)
	}
	m := tickLine.FindAllStringSubmatch(p.stdout.String(), -1)
	if len(m) == 0 {
		t.Fatalf("no tick before the snapshot:\n%s", p.stdout.String())
	}
	fmt.Sscan(m[len(m)-1][1], &tick)
	return statePath, memPath, tick, m[len(m)-1][2]
}

// servePagesE2E runs an internal/uffd page server for memPath until the
// test ends and returns its socket.
func servePagesE2E(t *testing.T, memPath string) string {
	t.Helper()
	testenv.RequireUFFD(t)
	return uffdtest.ServeFile(t, memPath, uffd.Config{})
}

// TestSnapshotThroughAPI snapshots the probe guest through one thaw-vmm's
// API and restores it into fresh thaw-vmm processes, with
// PUT /snapshot/load (resume_vm) as their first call, from the memory file
// and from a page server: each guest continues its tick count with the
// snapshot's checksum and resets cleanly (exit 0) on Ctrl+Alt+Del.
func TestSnapshotThroughAPI(t *testing.T) {
	statePath, memPath, tick, sum := snapshotProbe(t, t.TempDir())
	for _, backend := range []fcapi.MemBackendType{fcapi.MemBackendFile, fcapi.MemBackendUffd} {
		t.Run(string(backend), func(t *testing.T) {
			b := &fcapi.MemBackend{BackendType: backend, BackendPath: memPath}
			if backend == fcapi.MemBackendUffd {
				b.BackendPath = servePagesE2E(t, memPath)
			}
			p := startVMM(t, "--id", "clone")
			c := p.client(t)
			start := time.Now()
			if err := c.LoadSnapshot(ctx(t), fcapi.SnapshotLoadParams{SnapshotPath: statePath, MemBackend: b, ResumeVM: true}); err != nil {
				t.Fatal(err)
			}
			t.Logf("PUT /snapshot/load (%s, resume) took %v", backend, time.Since(start))
			if info, err := c.InstanceInfo(ctx(t)); err != nil || info.State != fcapi.StateRunning {
				t.Errorf("GET / after load with resume_vm: got %+v, %v, want %q", info, err, fcapi.StateRunning)
			}
			p.waitOutput(t, fmt.Sprintf("probe: tick %d sum=%s\n", tick+2, sum), guestWait)
			if strings.Contains(p.stdout.String(), "probe: boot") {
				t.Errorf("the restored guest booted again:\n%s", p.stdout.String())
			}
			if err := c.SendCtrlAltDel(ctx(t)); err != nil {
				t.Fatal(err)
			}
			if code := p.wait(t, guestWait); code != 0 {
				t.Errorf("exit code after the restored guest reset: got %d, want 0", code)
			}
		})
	}
}

// TestFailedLoadEndsProcess checks Firecracker's rule: a failed
// PUT /snapshot/load is answered with a 400 naming the problem and the
// process exits (status 1) with the error on stderr.
func TestFailedLoadEndsProcess(t *testing.T) {
	dir := t.TempDir()
	statePath, memPath, _, _ := snapshotProbe(t, dir)
	truncated := filepath.Join(dir, "truncated")
	data, err := os.ReadFile(memPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(truncated, data[:len(data)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		b    fcapi.MemBackend
		want string
	}{
		{"truncated memory file", fcapi.MemBackend{BackendType: fcapi.MemBackendFile, BackendPath: truncated}, "truncated"},
		{"no page server", fcapi.MemBackend{BackendType: fcapi.MemBackendUffd, BackendPath: filepath.Join(dir, "nobody.sock")}, "page server"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startVMM(t)
			c := p.client(t)
			err := c.LoadSnapshot(ctx(t), fcapi.SnapshotLoadParams{SnapshotPath: statePath, MemBackend: &tt.b, ResumeVM: true})
			var apiErr *fcapi.APIError
			if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("PUT /snapshot/load: got %v, want a 400 containing %q", err, tt.want)
			}
			if code := p.wait(t, 10*time.Second); code != 1 {
				t.Errorf("exit code after a failed load: got %d, want 1", code)
			}
			if !strings.Contains(p.stderr.String(), tt.want) {
				t.Errorf("stderr after a failed load lacks %q:\n%s", tt.want, p.stderr.String())
			}
		})
	}
}

// pageServerEnv makes this test binary a page server child:
// "<socket>:<memory file>", or "<socket>:<memory file>:stall" for one that
// serves for 300 ms and then stops answering without exiting (a hung page
// server). It serves one VMM on demand until killed.
const pageServerEnv = "THAW_E2E_PAGESERVER"

func pageServerChild(spec string) int {
	parts := strings.Split(spec, ":")
	if len(parts) < 2 || len(parts) > 3 || (len(parts) == 3 && parts[2] != "stall") {
		fmt.Fprintf(os.Stderr, "%s=%q: want socket:memfile[:stall]\n", pageServerEnv, spec)
		return 2
	}
	sock, mem := parts[0], parts[1]
	if len(parts) == 3 {
		stallAfter = 300 * time.Millisecond
	}
	l, err := uffd.Listen(sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer l.Close()
	src, err := uffd.OpenFile(mem)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer src.Close()
	fmt.Println("ready")
	if err := serveOne(l, src); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestPageServerDeathEndsVMM restores the probe into a thaw-vmm whose
// memory a page server child serves, kills the page server (SIGKILL)
// while the guest runs, and checks that thaw-vmm notices and exits with
// status 1 and an error naming the page server, instead of running on
// with memory nobody can serve.
func TestPageServerDeathEndsVMM(t *testing.T) {
	testenv.RequireUFFD(t)
	dir := t.TempDir()
	statePath, memPath, tick, sum := snapshotProbe(t, dir)
	ps := startPageServerChild(t, dir, memPath, false)
	p := startVMM(t, "--id", "clone")
	c := p.client(t)
	if err := c.LoadSnapshot(ctx(t), fcapi.SnapshotLoadParams{SnapshotPath: statePath, MemBackend: &fcapi.MemBackend{BackendType: fcapi.MemBackendUffd, BackendPath: ps.sock}, ResumeVM: true}); err != nil {
		t.Fatal(err)
	}
	p.waitOutput(t, fmt.Sprintf("probe: tick %d sum=%s\n", tick+1, sum), guestWait)
	ps.kill()
	killed := time.Now()
	if code := p.wait(t, 10*time.Second); code != 1 {
		t.Errorf("thaw-vmm exit code after its page server died: got %d, want 1", code)
	}
	if !strings.Contains(p.stderr.String(), "the page server exited") {
		t.Errorf("thaw-vmm stderr lacks the page server's death:\n%s", p.stderr.String())
	}
	t.Logf("thaw-vmm exited %v after the page server was killed", time.Since(killed))
}

// stallAfter, when set, makes serveOne stop answering faults after that
// long and then wait, holding nothing, until the process is killed.
var stallAfter time.Duration

// pageServerChildProc is a page server child process.
type pageServerChildProc struct {
	cmd  *exec.Cmd
	sock string
	once sync.Once
}

// startPageServerChildProc starts this test binary as a page server for
// memPath and waits until it listens.
func startPageServerChild(t *testing.T, dir, memPath string, stall bool) *pageServerChildProc {
	t.Helper()
	p := &pageServerChildProc{sock: filepath.Join(dir, "uffd.sock")}
	p.cmd = exec.Command(os.Args[0], "-test.run=^$")
	spec := p.sock + ":" + memPath
	if stall {
		spec += ":stall"
	}
	p.cmd.Env = append(os.Environ(), pageServerEnv+"="+spec)
	p.cmd.Stderr = os.Stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.kill)
	if _, err := out.Read(make([]byte, 6)); err != nil {
		t.Fatalf("page server child: %v", err)
	}
	return p
}

// kill kills the page server (SIGKILL, as in a crash) and reaps it.
func (p *pageServerChildProc) kill() {
	p.once.Do(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
}

// TestPageServerDeathWithBlockedVCPU restores the probe from a page
// server that stops answering 300 ms after the handshake (hung, not dead)
// while the guest is still faulting in its 4 MiB pattern, so a vCPU
// blocks in KVM_RUN on a page nobody serves, which no signal can
// interrupt; then it kills the page server. thaw-vmm must end by itself
// (status 1, the error on stderr) shortly after the death: its machine
// releases its userfaultfd, which wakes the vCPU.
func TestPageServerDeathWithBlockedVCPU(t *testing.T) {
	testenv.RequireUFFD(t)
	dir := t.TempDir()
	// 1024 pages take the emulated probe seconds to checksum, so most are
	// still unserved when the page server stalls.
	statePath, memPath, _, _ := snapshotProbeWith(t, dir, "probe.pages=1024 probe.ticks=0 probe.spin=100")
	ps := startPageServerChild(t, dir, memPath, true)
	p := startVMM(t, "--id", "clone")
	c := p.client(t)
	if err := c.LoadSnapshot(ctx(t), fcapi.SnapshotLoadParams{SnapshotPath: statePath, MemBackend: &fcapi.MemBackend{BackendType: fcapi.MemBackendUffd, BackendPath: ps.sock}, ResumeVM: true}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the server stalls at 300 ms; the vCPU blocks soon after
	ps.kill()
	killed := time.Now()
	if code := p.wait(t, 15*time.Second); code != 1 {
		t.Errorf("thaw-vmm exit code: got %d, want 1", code)
	}
	took := time.Since(killed)
	if !strings.Contains(p.stderr.String(), "the page server exited") || !strings.Contains(p.stderr.String(), "vCPUs blocked on guest memory") {
		t.Errorf("thaw-vmm stderr lacks the page server's death and the blocked vCPUs:\n%s", p.stderr.String())
	}
	t.Logf("thaw-vmm exited %v after the page server was killed", took)
}
