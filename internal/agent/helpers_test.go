package agent_test

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/agent"
	"github.com/thawvm/thaw/internal/agentapi"
)

// recordingSystem stands in for the kernel in server tests: setting the test
// host's clock or hostname is not something a test may do. The real calls
// are tested in system_test.go where that is safe.
type recordingSystem struct {
	mu       sync.Mutex
	hostname string
	clock    []time.Time
	entropy  [][]byte
}

func (r *recordingSystem) Hostname() (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hostname, nil
}

func (r *recordingSystem) SetHostname(name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hostname = name
	return nil
}

func (r *recordingSystem) SetClock(t time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clock = append(r.clock, t)
	return nil
}

func (r *recordingSystem) AddEntropy(b []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entropy = append(r.entropy, append([]byte(nil), b...))
	return nil
}

type harness struct {
	client *agentapi.Client
	server *agent.Server
	sys    *recordingSystem
	sock   string
	dir    string // scratch directory
}

// start runs an agent on a unix socket with cfg (System defaults to a
// recorder) and returns a client for it. Everything stops in cleanup.
func start(t testing.TB, cfg agent.Config) *harness {
	t.Helper()
	h := &harness{dir: t.TempDir()}
	baseline := runtime.NumGoroutine()
	if cfg.System == nil {
		h.sys = &recordingSystem{hostname: "before"}
		cfg.System = h.sys
	}
	if cfg.Logger == nil && testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	s, err := agent.New(cfg)
	if err != nil {
		t.Fatalf("agent.New: %v", err)
	}
	h.server = s
	// Socket paths are limited to 108 bytes; TempDir names can be long.
	sockDir, err := os.MkdirTemp("", "agent")
	if err != nil {
		t.Fatal(err)
	}
	h.sock = filepath.Join(sockDir, "a.sock")
	ln, err := net.Listen("unix", h.sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	h.client = agentapi.NewClient(agentapi.UnixDialer(h.sock))
	t.Cleanup(func() {
		h.client.Close()
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve returned %v after Close, want nil", err)
		}
		os.RemoveAll(sockDir)
		checkGoroutines(t, baseline)
	})
	return h
}

// checkGoroutines fails t if goroutines the server started outlive Close.
// Detached processes still running keep nothing: Close abandons them.
func checkGoroutines(t testing.TB, baseline int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Errorf("%d goroutines after Close, %d before start:\n%s", runtime.NumGoroutine(), baseline, buf[:runtime.Stack(buf, true)])
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// gone reports whether pid has exited (absent, or a zombie not yet reaped by
// whoever its parent is now).
func gone(pid int) bool {
	b, err := os.ReadFile("/proc/" + itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// The state follows the ") " that closes the command name.
	for i := len(b) - 1; i > 0; i-- {
		if b[i] == ')' && i+2 < len(b) {
			return b[i+2] == 'Z' || b[i+2] == 'X'
		}
	}
	return false
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !gone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still running 10s after it should have been killed", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
