package sandbox

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/daemon/sandbox/sandboxtest"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/shim"
)

// TestAgentReady runs the agent ready check against a real agent behind a
// vsock socket (on the host: thaw-vmm has no vsock device yet): health,
// then init with the sandbox's hostname, env, the clock and entropy. An
// agent that never answers ends in "deadline exceeded". The handles' shim
// sockets answer nothing, so the VM is never seen to end.
func TestAgentReady(t *testing.T) {
	dir := t.TempDir()
	h := &shim.Handle{Client: shim.NewClient(filepath.Join(dir, "no-shim.sock")), Dir: dir}
	sys := sandboxtest.ServeVsockAgent(t, filepath.Join(dir, VsockName))
	before := time.Now()
	if err := waitReady(context.Background(), h, store.ReadyCheck{}, 10*time.Second, "sb-1", []string{"A=b"}); err != nil {
		t.Fatal(err)
	}
	host, clock, entropy := sys.Init()
	if host != "sb-1" || clock.Before(before) || clock.After(time.Now()) || entropy != 64 {
		t.Errorf("init: got hostname %q, clock %v, %d entropy bytes; want sb-1, about now, 64", host, clock, entropy)
	}

	silentDir := t.TempDir() // no agent behind it
	silent := &shim.Handle{Client: shim.NewClient(filepath.Join(silentDir, "no-shim.sock")), Dir: silentDir}
	err := waitReady(context.Background(), silent, store.ReadyCheck{Kind: store.ReadyAgent}, 300*time.Millisecond, "sb-2", nil)
	if !errdefs.IsDeadlineExceeded(err) {
		t.Errorf("agent that never answers: got %v, want deadline exceeded", err)
	}
}

// TestAgentReadyVMEnds checks that a VM which ends while its agent or its
// serial marker is awaited fails the ready check at once, saying how it ended and what the
// VMM printed, rather than when the check's bound runs out. The shim is a
// stand-in whose /wait answers, after a moment, that the VMM exited.
func TestAgentReadyVMEnds(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, shim.VMMLogName), []byte("vcpu 0: the guest triple-faulted\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := endingShim(t, dir, "sb", 200*time.Millisecond)
	// Without the watch, these would end at their bound with "deadline
	// exceeded" and nothing about the VM.
	for _, tc := range []struct {
		ready store.ReadyCheck
		want  string
	}{
		{store.ReadyCheck{Kind: store.ReadyAgent}, "the VM ended before its agent answered"},
		{store.ReadyCheck{Kind: store.ReadySerial, Marker: "ready!"}, `the VM ended before "ready!" appeared on its serial console`},
	} {
		err := waitReady(context.Background(), h, tc.ready, time.Minute, "sb", nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "triple-faulted") {
			t.Errorf("%s ready check: got %v, want %q and the VMM's output", tc.ready.Kind, err, tc.want)
		}
	}
}

// endingShim serves a stand-in shim control socket in dir whose /wait
// answers, after delay, that VM id failed with its VMM exited, and
// returns a handle to it.
func endingShim(t *testing.T, dir, id string, delay time.Duration) *shim.Handle {
	t.Helper()
	sock := filepath.Join(dir, "shim.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /wait", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(delay)
		json.NewEncoder(w).Encode(shim.Status{ID: id, State: shim.StateFailed, Reason: "the VMM exited", Exit: &shim.ExitStatus{Code: 1}, Done: true})
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return &shim.Handle{Client: shim.NewClient(sock), Dir: dir}
}
