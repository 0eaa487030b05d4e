package sandbox

import (
	"context"
	"path/filepath"
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
// agent that never answers ends in "deadline exceeded".
func TestAgentReady(t *testing.T) {
	dir := t.TempDir()
	h := &shim.Handle{Dir: dir}
	sys := sandboxtest.ServeVsockAgent(t, filepath.Join(dir, VsockName))
	before := time.Now()
	if err := waitReady(context.Background(), h, store.ReadyCheck{}, 10*time.Second, "sb-1", []string{"A=b"}); err != nil {
		t.Fatal(err)
	}
	host, clock, entropy := sys.Init()
	if host != "sb-1" || clock.Before(before) || clock.After(time.Now()) || entropy != 64 {
		t.Errorf("init: got hostname %q, clock %v, %d entropy bytes; want sb-1, about now, 64", host, clock, entropy)
	}

	silent := &shim.Handle{Dir: t.TempDir()} // no agent behind it
	err := waitReady(context.Background(), silent, store.ReadyCheck{Kind: store.ReadyAgent}, 300*time.Millisecond, "sb-2", nil)
	if !errdefs.IsDeadlineExceeded(err) {
		t.Errorf("agent that never answers: got %v, want deadline exceeded", err)
	}
}
