package sandboxtest

import (
	"bufio"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/agent"
)

// ServeVsockAgent plays the guest side of a sandbox's vsock device: it
// listens on the host-side socket path as Firecracker's vsock does, answers
// "CONNECT <port>" with "OK <port>" and connects each stream to a real
// thaw-agent server running on the host. thaw-vmm has no virtio-vsock yet
// and PVM cannot boot a Linux guest here, so this is the one place the
// agent does not run in the guest: everything on thawd's side (API route,
// streaming, agent client, vsock handshake) is the real code.
//
// The agent's System is a FakeSystem, so an init changes nothing on the
// host; it is returned for the test to inspect.
func ServeVsockAgent(t *testing.T, path string) *FakeSystem {
	t.Helper()
	sys := &FakeSystem{}
	srv, err := agent.New(agent.Config{Version: "test", System: sys})
	if err != nil {
		t.Fatal(err)
	}
	agentSock := filepath.Join(t.TempDir(), "agent.sock")
	al, err := net.Listen("unix", agentSock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(al)
	vl, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { vl.Close(); srv.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := vl.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				line, err := br.ReadString('\n')
				if err != nil || strings.TrimSpace(line) != "CONNECT 10000" {
					return
				}
				a, err := net.Dial("unix", agentSock)
				if err != nil {
					return
				}
				defer a.Close()
				io.WriteString(c, "OK 10000\n")
				done := make(chan struct{})
				go func() { io.Copy(a, br); a.(*net.UnixConn).CloseWrite(); close(done) }()
				io.Copy(c, a)
				c.(*net.UnixConn).CloseWrite()
				<-done
			}()
		}
	}()
	return sys
}

// FakeSystem records what an agent's init asked of the system instead of
// doing it.
type FakeSystem struct {
	mu       sync.Mutex
	hostname string
	clock    time.Time
	entropy  int
}

// Hostname implements agent.System.
func (f *FakeSystem) Hostname() (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hostname, nil
}

// SetHostname implements agent.System.
func (f *FakeSystem) SetHostname(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hostname = name
	return nil
}

// SetClock implements agent.System.
func (f *FakeSystem) SetClock(t time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clock = t
	return nil
}

// AddEntropy implements agent.System.
func (f *FakeSystem) AddEntropy(b []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entropy += len(b)
	return nil
}

// Init returns what the inits so far set: hostname, clock, entropy bytes.
func (f *FakeSystem) Init() (hostname string, clock time.Time, entropy int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hostname, f.clock, f.entropy
}
