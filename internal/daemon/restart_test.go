package daemon

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/daemon/disk/disktest"
	"github.com/thawvm/thaw/internal/daemon/sandbox/sandboxtest"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/testenv"
	"github.com/thawvm/thaw/internal/thawapi"
)

func TestMain(m *testing.M) {
	code := m.Run()
	sandboxtest.Cleanup()
	os.Exit(code)
}

// thawdProc is a thawd binary running as its own process.
type thawdProc struct {
	cmd  *exec.Cmd
	logs *syncBuffer
}

func startThawd(t *testing.T, bins, data, sock string) *thawdProc {
	t.Helper()
	p := &thawdProc{logs: &syncBuffer{}}
	p.cmd = exec.Command(filepath.Join(bins, "thawd"), "-config", "/dev/null", "-data-dir", data, "-socket", sock,
		"-shim", filepath.Join(bins, "thaw-shim"), "-vmm", filepath.Join(bins, "thaw-vmm"), "-reconcile-interval", "1h")
	p.cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := thawapi.NewUnix(sock)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Version(ctx)
		cancel()
		if err == nil {
			return p
		}
		if time.Now().After(deadline) {
			p.cmd.Process.Kill()
			p.cmd.Wait()
			t.Fatalf("thawd never answered on %s: %v\n%s", sock, err, p.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ticks counts the probe's ticks in a sandbox's serial log.
func ticks(t *testing.T, data, id string) int {
	b, err := os.ReadFile(filepath.Join(data, "sandboxes", id, "vmm.log"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), sandboxtest.ReadyMarker)
}

// TestRestartReattaches is issue 7's daemon-restart test on this machine's
// probe guests: create sandboxes through a thawd process, kill -9 thawd,
// start it again: every sandbox is reattached (same shim), keeps running
// (its guest goes on ticking: none is frozen) and can be deleted through the
// new thawd, which leaves no process behind. THAW_TEST_RESTART_N sets the
// number of sandboxes (default 6: each probe keeps two vCPUs busy, and
// this machine has two cores).
func TestRestartReattaches(t *testing.T) {
	testenv.RequireKVM(t)
	testenv.RequireUFFD(t)
	testenv.RequireRoot(t)
	n := 6
	if v := os.Getenv("THAW_TEST_RESTART_N"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("THAW_TEST_RESTART_N=%q: want a positive integer", v)
		}
	}
	bins := sandboxtest.Binaries(t)
	snap := sandboxtest.ProbeSnapshot(t, t.TempDir())
	data := filepath.Join(disktest.Mount(t, "xfs", 400), "d")
	sock := filepath.Join(t.TempDir(), "thawd.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	first := startThawd(t, bins, data, sock)
	c := thawapi.NewUnix(sock)
	if _, err := c.RegisterTemplate(ctx, "probe", thawapi.RegisterTemplate{VMState: snap.VMState, Memory: snap.Memory, Rootfs: snap.Rootfs,
		Kernel: snap.Kernel, VCPUs: sandboxtest.ProbeVCPUs, MemoryMiB: sandboxtest.ProbeMemMiB,
		Ready: &thawapi.ReadyCheck{Kind: "serial", Marker: sandboxtest.ReadyMarker}}); err != nil {
		t.Fatal(err)
	}
	shims := map[string]int{}
	for i := range n {
		sb, err := c.CreateSandbox(ctx, thawapi.CreateSandbox{ID: fmt.Sprintf("s%d", i), Template: "probe"})
		if err != nil {
			t.Fatalf("create %d: %v\n%s", i, err, first.logs.String())
		}
		if sb.State != "running" || sb.ShimPID == 0 || len(sb.Create) == 0 {
			t.Fatalf("create %d: got %+v, want running with a shim and timings", i, sb)
		}
		shims[sb.ID] = sb.ShimPID
	}
	first.cmd.Process.Signal(syscall.SIGKILL)
	first.cmd.Wait()
	before := map[string]int{}
	for id := range shims {
		before[id] = ticks(t, data, id)
	}

	second := startThawd(t, bins, data, sock)
	defer func() {
		second.cmd.Process.Signal(syscall.SIGTERM)
		second.cmd.Wait()
	}()
	sbs, err := c.Sandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(sbs) != n {
		t.Errorf("sandboxes after the restart: got %d, want %d", len(sbs), n)
	}
	for _, sb := range sbs {
		if sb.State != "running" || sb.ShimPID != shims[sb.ID] {
			t.Errorf("sandbox %s after the restart: got %s under shim %d, want running under %d (%s)", sb.ID, sb.State, sb.ShimPID, shims[sb.ID], sb.Reason)
		}
	}
	if !strings.Contains(second.logs.String(), "action=reattach") {
		t.Errorf("the second thawd logged no reattach:\n%s", second.logs.String())
	}
	// Every guest is still running: its tick count grows.
	deadline := time.Now().Add(60 * time.Second)
	for id, b := range before {
		for ticks(t, data, id) <= b {
			if time.Now().After(deadline) {
				t.Fatalf("sandbox %s is frozen: no tick beyond %d after the restart", id, b)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for id, pid := range shims {
		if err := c.DeleteSandbox(ctx, id); err != nil {
			t.Errorf("delete %s through the new thawd: %v", id, err)
		}
		if _, err := os.Stat(filepath.Join(data, "sandboxes", id)); !os.IsNotExist(err) {
			t.Errorf("directory of %s after delete: %v", id, err)
		}
		if err := syscall.Kill(pid, 0); err == nil {
			if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); !strings.Contains(string(st), ") Z ") {
				t.Errorf("shim %d of %s still running after delete", pid, id)
			}
		}
	}
	if _, err := c.Sandbox(ctx, "s0"); !errdefs.IsNotFound(err) {
		t.Errorf("deleted sandbox: got %v, want not found", err)
	}
}
