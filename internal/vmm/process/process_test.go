package process_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thawvm/thaw/guest/probe"
	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/testenv"
	"github.com/thawvm/thaw/internal/uffd/uffdtest"
	"github.com/thawvm/thaw/internal/vmm/process"
)

const tick = "probe: tick "

// serial collects the guest's console output.
type serial struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *serial) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *serial) count(marker string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Count(s.buf.String(), marker)
}

// waitFor polls cond every 5 ms until it holds or ctx ends.
func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v", what, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// bootProbe starts an instance booting the probe guest from a boot
// configuration, with the API on <dir>/api.sock, and waits for two ticks.
func bootProbe(ctx context.Context, t *testing.T, dir string) (*process.Instance, *serial) {
	t.Helper()
	testenv.RequireKVM(t)
	kernel, err := probe.Build(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	out := &serial{}
	in, err := process.Start(ctx, process.Config{
		APISocket: filepath.Join(dir, "api.sock"), ID: "probe", Serial: out,
		Boot: &fcapi.VMConfig{
			BootSource:    fcapi.BootSource{KernelImagePath: kernel, BootArgs: "probe.pages=16 probe.ticks=0 probe.spin=2000"},
			MachineConfig: &fcapi.MachineConfig{VcpuCount: 1, MemSizeMib: 64},
		},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Kill(); <-in.Done() })
	waitFor(ctx, t, "two ticks of the probe", func() bool { return out.count(tick) >= 2 })
	return in, out
}

// TestStopEndsCleanly boots the probe, checks that the API answers on the
// socket, stops the instance and checks how it ended and that the socket
// is gone.
func TestStopEndsCleanly(t *testing.T) {
	ctx := testCtx(t)
	dir := t.TempDir()
	in, _ := bootProbe(ctx, t, dir)
	c := fcapi.NewClient(filepath.Join(dir, "api.sock"))
	defer c.Close()
	info, err := c.InstanceInfo(ctx)
	if err != nil || info.State != fcapi.StateRunning || info.ID != "probe" {
		t.Fatalf("GET /: got %+v, %v; want Running with id probe", info, err)
	}
	in.Stop()
	end, err := in.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if end.Err != nil || !end.Stopped || end.Killed {
		t.Errorf("end after Stop: got %+v, want stopped without error", end)
	}
	if _, err := os.Lstat(filepath.Join(dir, "api.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("API socket after the end: got %v, want it removed", err)
	}
}

// TestGuestEndIsNoError: Ctrl+Alt+Del makes the probe reset through the
// i8042; the instance ends on its own, without error.
func TestGuestEndIsNoError(t *testing.T) {
	ctx := testCtx(t)
	dir := t.TempDir()
	in, _ := bootProbe(ctx, t, dir)
	c := fcapi.NewClient(filepath.Join(dir, "api.sock"))
	defer c.Close()
	if err := c.SendCtrlAltDel(ctx); err != nil {
		t.Fatal(err)
	}
	end, err := in.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if end.Err != nil || end.Stopped || end.Killed {
		t.Errorf("end after the guest reset: got %+v, want neither error, stop nor kill", end)
	}
}

func TestStartRefuses(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "api.sock")
	if err := os.WriteFile(existing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		cfg  process.Config
		want string
	}{
		{"no API, no boot", process.Config{}, "needs a boot configuration"},
		{"socket exists", process.Config{APISocket: existing}, "already exists"},
		{"negative procs", process.Config{APISocket: filepath.Join(dir, "x.sock"), MaxProcs: -1}, "max procs"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in, err := process.Start(context.Background(), tt.cfg, nil)
			if err == nil {
				in.Kill()
				<-in.Done()
				t.Fatalf("Start: got nil error, want one containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Start: got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestKillWithVCPUsBlockedOnGuestMemory restores the probe with the Uffd
// backend from a page server that dies after serving the first page and
// closes its userfaultfd, as the shim does when serving fails: the
// probe's vCPU then waits inside KVM_RUN for a page that never comes. Kill
// must end the instance anyway. On kvm_pvm a signal does not get the vCPU
// out (the fault is taken by the instruction emulator's guest page-table
// walk, which retries it in the kernel); releasing the VMM's copy of the
// userfaultfd does.
func TestKillWithVCPUsBlockedOnGuestMemory(t *testing.T) {
	testenv.RequireUFFD(t)
	ctx := testCtx(t)
	dir := t.TempDir()
	in, _ := bootProbe(ctx, t, dir)
	c := fcapi.NewClient(filepath.Join(dir, "api.sock"))
	defer c.Close()
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	vmstate, mem := filepath.Join(dir, "vmstate"), filepath.Join(dir, "mem")
	if err := c.CreateSnapshot(ctx, fcapi.SnapshotCreateParams{SnapshotType: fcapi.SnapshotFull, SnapshotPath: vmstate, MemFilePath: mem}); err != nil {
		t.Fatal(err)
	}
	in.Stop()
	if _, err := in.Wait(ctx); err != nil {
		t.Fatal(err)
	}

	served := uffdtest.ServeFirstPageOnly(t, filepath.Join(dir, "uffd.sock"), mem)

	out := &serial{}
	sock := filepath.Join(dir, "api2.sock")
	in2, err := process.Start(ctx, process.Config{APISocket: sock, ID: "restored", Serial: out}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c2 := fcapi.NewClient(sock)
	defer c2.Close()
	if err := c2.LoadSnapshot(ctx, fcapi.SnapshotLoadParams{SnapshotPath: vmstate,
		MemBackend: &fcapi.MemBackend{BackendType: fcapi.MemBackendUffd, BackendPath: filepath.Join(dir, "uffd.sock")}, ResumeVM: true}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-served:
		if !errors.Is(err, uffdtest.ErrBroken) {
			t.Fatalf("page server: got %v, want it broken by the test", err)
		}
	case <-ctx.Done():
		t.Fatal("the restored probe faulted on no page past the first")
	}
	time.Sleep(200 * time.Millisecond)
	if n := out.count(tick); n != 0 {
		t.Fatalf("the restored probe ticked %d times without a page server; the test proves nothing", n)
	}
	in2.Stop() // closes the machine, which waits for the vCPU
	select {
	case <-in2.Done():
		t.Log("Stop ended the instance although its vCPU waited for a page: the kick interrupted the fault")
	case <-time.After(time.Second):
		t.Log("Stop did not end the instance within 1s: its vCPU waits for a page")
	}
	in2.Kill()
	killCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	end, err := in2.Wait(killCtx)
	if err != nil {
		t.Fatalf("Kill did not end an instance whose vCPU waits for a page that never comes: %v", err)
	}
	if end.Err != nil {
		t.Errorf("end after Kill: got %+v, want no error", end)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("API socket after Kill: got %v, want it removed", err)
	}
}
