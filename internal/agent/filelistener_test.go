package agent

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/agentapi"
)

// TestFileListener serves the agent through the listener and connection
// types ListenVsock uses, on an AF_UNIX socket (this host has no vsock
// loopback): accept, streamed exec with stdin, hang-up detection through
// the connection's SyscallConn, and Close ending the accept loop.
func TestFileListener(t *testing.T) {
	dir, err := os.MkdirTemp("", "fl")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "s")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		t.Fatal(err)
	}
	ln := newFileListener(fd, sockAddr{network: "unix"})

	s, err := New(Config{System: nopSystem{}})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	c := agentapi.NewClient(agentapi.UnixDialer(path))
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var out bytes.Buffer
	data := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
	st, err := c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"cat"}}, strings.NewReader(data), &out, nil)
	if err != nil || st.Code != 0 || out.String() != data {
		t.Errorf("cat through fileConn: got %d bytes, %v, %v; want the 1 MiB sent", out.Len(), st, err)
	}

	e, err := c.Start(ctx, agentapi.ExecRequest{Argv: []string{"sleep", "100"}, Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		chunk := make([]byte, 1<<20)
		for range 64 {
			if _, err := e.Write(chunk); err != nil {
				return
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	e.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if unix.Kill(e.PID(), 0) != nil || isZombie(e.PID()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d survived its client hanging up", e.PID())
		}
	}

	s.Close()
	if err := <-served; err != nil {
		t.Errorf("Serve after Close: %v", err)
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] == 'Z'
}

// nopSystem keeps tests from touching the host's hostname, clock and pool.
type nopSystem struct{}

func (nopSystem) Hostname() (string, error) { return "test", nil }
func (nopSystem) SetHostname(string) error  { return nil }
func (nopSystem) SetClock(time.Time) error  { return nil }
func (nopSystem) AddEntropy(b []byte) error { return nil }
