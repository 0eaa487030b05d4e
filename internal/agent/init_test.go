package agent_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/agent"
	"github.com/thawvm/thaw/internal/agentapi"
)

func TestHealthAndInit(t *testing.T) {
	h := start(t, agent.Config{Version: "v-test"})
	ctx := ctxT(t)
	hl, err := h.client.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if hl.Protocol != agentapi.ProtocolVersion || hl.Version != "v-test" || hl.Initialized || hl.PID != os.Getpid() || hl.Hostname != "before" {
		t.Errorf("Health before init: got %+v", hl)
	}
	now := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	entropy := bytes.Repeat([]byte{7}, 64)
	hl, err = h.client.Init(ctx, agentapi.InitRequest{
		Env:      []string{"FROM_INIT=1", "SHARED=init"},
		Hostname: "sandbox-1",
		Workdir:  h.dir,
		Time:     now,
		Entropy:  entropy,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !hl.Initialized || hl.InitCount != 1 || hl.Hostname != "sandbox-1" {
		t.Errorf("Health after init: got %+v, want initialized once with hostname sandbox-1", hl)
	}
	if len(h.sys.clock) != 1 || !h.sys.clock[0].Equal(now) {
		t.Errorf("clock set to %v, want [%v]", h.sys.clock, now)
	}
	if len(h.sys.entropy) != 1 || !bytes.Equal(h.sys.entropy[0], entropy) {
		t.Errorf("entropy added: %d calls, want 1 with the sent bytes", len(h.sys.entropy))
	}
	out, _, _ := run(t, h, agentapi.ExecRequest{Shell: "echo $FROM_INIT $SHARED; pwd", Env: []string{"SHARED=req"}}, nil)
	if want := "1 req\n" + h.dir + "\n"; out != want {
		t.Errorf("exec after init: got %q, want %q (init env, request env wins, init workdir)", out, want)
	}
	// A second init (the next restore) counts.
	if hl, err = h.client.Init(ctx, agentapi.InitRequest{}); err != nil || hl.InitCount != 2 {
		t.Errorf("second init: got %+v, %v; want count 2", hl, err)
	}
}

func TestInitErrors(t *testing.T) {
	h := start(t, agent.Config{})
	ctx := ctxT(t)
	tests := []struct {
		name string
		req  agentapi.InitRequest
		kind agentapi.Kind
		want string
	}{
		{"short entropy", agentapi.InitRequest{Entropy: []byte{1, 2}}, agentapi.KindInvalid, "entropy is 2 bytes"},
		{"bad hostname", agentapi.InitRequest{Hostname: "a/b"}, agentapi.KindInvalid, "hostname"},
		{"missing workdir", agentapi.InitRequest{Workdir: "/no/such/dir"}, agentapi.KindNotFound, "does not exist"},
		{"unknown user", agentapi.InitRequest{User: "no-such-user-xyz"}, agentapi.KindNotFound, "no-such-user-xyz"},
	}
	for _, tt := range tests {
		_, err := h.client.Init(ctx, tt.req)
		if err == nil || !strings.Contains(err.Error(), tt.want) || agentapi.KindOf(err) != tt.kind {
			t.Errorf("%s: got %v (kind %s), want %s error containing %q", tt.name, err, agentapi.KindOf(err), tt.kind, tt.want)
		}
	}
	if len(h.sys.clock)+len(h.sys.entropy) != 0 {
		t.Errorf("rejected inits changed the system: %d clock sets, %d entropy adds", len(h.sys.clock), len(h.sys.entropy))
	}
}

func TestBadRequests(t *testing.T) {
	h := start(t, agent.Config{})
	conn, err := net.Dial("unix", h.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tests := []struct{ req, want string }{
		{"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n", "404"},
		{"POST /init HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\n{\"bad\":1}", "unknown field"},
		{"POST /exec HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}", "Upgrade: thaw-exec"},
	}
	for _, tt := range tests {
		c, err := net.Dial("unix", h.sock)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(tt.req))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 4096)
		n, _ := c.Read(buf)
		c.Close()
		if !strings.Contains(string(buf[:n]), tt.want) {
			t.Errorf("%q: got %q, want it to contain %q", tt.req, buf[:n], tt.want)
		}
	}
}

func TestShutdownRoute(t *testing.T) {
	h := start(t, agent.Config{})
	err := h.client.Shutdown(ctxT(t), agentapi.ShutdownRequest{})
	if !errors.Is(err, agentapi.ErrPrecondition) {
		t.Errorf("Shutdown on a non-init agent: got %v, want failed precondition", err)
	}
	got := make(chan string, 1)
	h2 := start(t, agent.Config{Shutdown: func(action string) { got <- action }})
	if err := h2.client.Shutdown(ctxT(t), agentapi.ShutdownRequest{Action: "reboot"}); err != nil {
		t.Fatal(err)
	}
	if a := <-got; a != "reboot" {
		t.Errorf("shutdown action %q, want reboot", a)
	}
	if err := h2.client.Shutdown(ctxT(t), agentapi.ShutdownRequest{Action: "boom"}); !errors.Is(err, agentapi.ErrInvalid) {
		t.Errorf("bad action: got %v, want invalid argument", err)
	}
}

// flakyListener fails Accept with the errors a restored snapshot produces
// before handing out real connections.
type flakyListener struct {
	net.Listener
	fails atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	switch l.fails.Add(1) {
	case 1:
		return nil, &net.OpError{Op: "accept", Net: "vsock", Err: os.NewSyscallError("accept4", syscall.ECONNRESET)}
	case 2:
		return nil, &net.OpError{Op: "accept", Net: "vsock", Err: os.NewSyscallError("accept4", syscall.ECONNABORTED)}
	case 3:
		return nil, &net.OpError{Op: "accept", Net: "vsock", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

func TestAcceptSurvivesErrors(t *testing.T) {
	s, err := agent.New(agent.Config{System: &recordingSystem{}})
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := os.MkdirTemp("", "agent")
	defer os.RemoveAll(dir)
	ln, err := net.Listen("unix", dir+"/a.sock")
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: ln}
	served := make(chan error, 1)
	go func() { served <- s.Serve(fl) }()
	c := agentapi.NewClient(agentapi.UnixDialer(dir + "/a.sock"))
	defer c.Close()
	if _, err := c.Health(ctxT(t)); err != nil {
		t.Errorf("Health after accept errors: %v", err)
	}
	if n := fl.fails.Load(); n < 4 {
		t.Errorf("Accept called %d times, want the 3 failures and then success", n)
	}
	s.Close()
	if err := <-served; err != nil {
		t.Errorf("Serve after Close: got %v, want nil", err)
	}
}

// TestWaitReady polls an agent that starts listening only later, as after a
// boot or restore.
func TestWaitReady(t *testing.T) {
	dir, err := os.MkdirTemp("", "agent")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := dir + "/late.sock"
	c := agentapi.NewClient(agentapi.UnixDialer(sock))
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err = c.WaitReady(ctx, 5*time.Millisecond)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "last error") {
		t.Errorf("WaitReady with no agent: got %v, want a deadline error with the last failure", err)
	}

	s, err := agent.New(agent.Config{System: &recordingSystem{}})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() {
		time.Sleep(100 * time.Millisecond)
		ln, err := net.Listen("unix", sock)
		if err != nil {
			served <- err
			return
		}
		served <- s.Serve(ln)
	}()
	h, err := c.WaitReady(ctxT(t), 5*time.Millisecond)
	if err != nil || h.Protocol != agentapi.ProtocolVersion {
		t.Errorf("WaitReady: got %+v, %v", h, err)
	}
	s.Close()
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
}
