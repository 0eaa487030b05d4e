package main

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/agentapi"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string // error substring, "" for none
	}{
		{nil, ""},
		{[]string{"-listen", "unix:/run/a.sock"}, ""},
		{[]string{"-listen", "vsock:52"}, ""},
		{[]string{"-listen", "tcp:1"}, "use vsock:PORT"},
		{[]string{"-listen", "vsock:x"}, "use vsock:PORT"},
		{[]string{"-listen", "unix:"}, "use vsock:PORT"},
		{[]string{"-log-level", "loud"}, "-log-level"},
		{[]string{"-nope"}, "not defined"},
	}
	for _, tt := range tests {
		o, err := parseFlags(tt.args, &bytes.Buffer{})
		if tt.want == "" && err != nil {
			t.Errorf("%q: got %v", tt.args, err)
		}
		if tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%q: got %v, want an error containing %q", tt.args, err, tt.want)
		}
		if tt.args == nil && o.listen != "vsock:10000" {
			t.Errorf("default listen %q, want vsock:10000", o.listen)
		}
	}
}

// buildAgent builds the binary the way images get it: static, no cgo.
func buildAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "thaw-agent")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func TestBinaryIsStatic(t *testing.T) {
	f, err := elf.Open(buildAgent(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("thaw-agent has a PT_INTERP header: it is dynamically linked, want static")
		}
	}
}

// TestSubreaper runs the real binary as a child subreaper, the closest a
// host gets to PID 1: it must reap orphans left by commands, still report
// each command's own status, and stop cleanly on SIGTERM.
func TestSubreaper(t *testing.T) {
	bin := buildAgent(t)
	dir, err := os.MkdirTemp("", "thaw-agent")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "a.sock")
	var logs bytes.Buffer
	cmd := exec.Command(bin, "-listen", "unix:"+sock, "-subreaper", "-log-level", "debug")
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("agent log:\n%s", logs.String())
		}
	}()
	c := agentapi.NewClient(agentapi.UnixDialer(sock))
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for deadline := time.Now().Add(20 * time.Second); ; {
		if _, err := c.Health(ctx); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("agent not healthy after 20s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The orphan (the backgrounded sleep) is reparented to the agent.
	var out bytes.Buffer
	st, err := c.Exec(ctx, agentapi.ExecRequest{Shell: "sleep 0.2 & echo $!; exit 7"}, nil, &out, nil)
	if err != nil || st.Code != 7 {
		t.Fatalf("exec: got %+v, %v; want exit code 7", st, err)
	}
	orphan, _ := strconv.Atoi(strings.TrimSpace(out.String()))
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := os.Stat("/proc/" + strconv.Itoa(orphan))
		if os.IsNotExist(err) {
			break // exited and reaped (a zombie would still be listed)
		}
		if time.Now().After(deadline) {
			stat, _ := os.ReadFile("/proc/" + strconv.Itoa(orphan) + "/stat")
			t.Fatalf("orphan %d not reaped after 10s: %s", orphan, stat)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Reap-all mode hands each status to its own exec, also when many
	// processes exit at once and SIGCHLDs coalesce.
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				code := (w*25 + i) % 200
				st, err := c.Exec(ctx, agentapi.ExecRequest{Argv: []string{"sh", "-c", "exit " + strconv.Itoa(code)}}, nil, nil, nil)
				if err != nil || st.Code != code {
					errs <- fmt.Errorf("exit %d: got %+v, %v", code, st, err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("agent exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(15 * time.Second):
		t.Error("agent still running 15s after SIGTERM")
	}
}
