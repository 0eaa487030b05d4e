package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/agent"
	"github.com/thawvm/thaw/internal/agentapi"
	"github.com/thawvm/thaw/internal/testenv"
)

func run(t *testing.T, h *harness, req agentapi.ExecRequest, stdin io.Reader) (stdout, stderr string, st agentapi.ExitStatus) {
	t.Helper()
	var out, errb bytes.Buffer
	st, err := h.client.Exec(ctxT(t), req, stdin, &out, &errb)
	if err != nil {
		t.Fatalf("Exec(%+v): %v", req, err)
	}
	return out.String(), errb.String(), st
}

func TestExecBasics(t *testing.T) {
	h := start(t, agent.Config{})
	tests := []struct {
		name       string
		req        agentapi.ExecRequest
		stdin      string
		wantOut    string
		wantErr    string
		wantStatus agentapi.ExitStatus
	}{
		{"argv", agentapi.ExecRequest{Argv: []string{"echo", "hello", "world"}}, "", "hello world\n", "", agentapi.ExitStatus{}},
		{"shell", agentapi.ExecRequest{Shell: "echo out; echo err >&2; exit 3"}, "", "out\n", "err\n", agentapi.ExitStatus{Code: 3}},
		{"signal", agentapi.ExecRequest{Shell: "kill -9 $$"}, "", "", "", agentapi.ExitStatus{Code: -1, Signal: 9, SignalName: "SIGKILL"}},
		{"env", agentapi.ExecRequest{Shell: "echo $A-$B", Env: []string{"A=1", "B=2", "A=3"}}, "", "3-2\n", "", agentapi.ExitStatus{}},
		{"cwd", agentapi.ExecRequest{Argv: []string{"pwd"}, Cwd: h.dir}, "", h.dir + "\n", "", agentapi.ExitStatus{}},
		{"stdin", agentapi.ExecRequest{Argv: []string{"tr", "a-z", "A-Z"}}, "shout\n", "SHOUT\n", "", agentapi.ExitStatus{}},
		{"no stdin is /dev/null", agentapi.ExecRequest{Shell: "cat; echo eof"}, "", "eof\n", "", agentapi.ExitStatus{}},
		{"own process group", agentapi.ExecRequest{Shell: `[ "$(ps -o pgid= $$ | tr -d ' ')" = "$$" ] && echo leader`}, "", "leader\n", "", agentapi.ExitStatus{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var in io.Reader
			if tt.stdin != "" {
				in = strings.NewReader(tt.stdin)
			}
			out, errOut, st := run(t, h, tt.req, in)
			if out != tt.wantOut || errOut != tt.wantErr {
				t.Errorf("got stdout %q stderr %q, want %q %q", out, errOut, tt.wantOut, tt.wantErr)
			}
			if st != tt.wantStatus {
				t.Errorf("got status %+v, want %+v", st, tt.wantStatus)
			}
		})
	}
}

func TestExecErrors(t *testing.T) {
	h := start(t, agent.Config{})
	noexec := filepath.Join(h.dir, "noexec")
	if err := os.WriteFile(noexec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		req  agentapi.ExecRequest
		kind agentapi.Kind
		want string
	}{
		{"missing program", agentapi.ExecRequest{Argv: []string{"no-such-program-xyz"}}, agentapi.KindNotFound, `program "no-such-program-xyz" not found in PATH`},
		{"missing path", agentapi.ExecRequest{Argv: []string{"/no/such/prog"}}, agentapi.KindNotFound, "/no/such/prog does not exist"},
		{"not executable", agentapi.ExecRequest{Argv: []string{noexec}}, agentapi.KindPermission, "is not executable"},
		{"directory", agentapi.ExecRequest{Argv: []string{h.dir}}, agentapi.KindPrecondition, "is not a regular file"},
		{"missing cwd", agentapi.ExecRequest{Argv: []string{"true"}, Cwd: "/no/such/dir"}, agentapi.KindNotFound, "directory /no/such/dir does not exist"},
		{"relative cwd", agentapi.ExecRequest{Argv: []string{"true"}, Cwd: "tmp"}, agentapi.KindInvalid, "not absolute"},
		{"unknown user", agentapi.ExecRequest{Argv: []string{"true"}, User: "no-such-user-xyz"}, agentapi.KindNotFound, `user "no-such-user-xyz" is not in`},
		{"empty", agentapi.ExecRequest{}, agentapi.KindInvalid, "needs argv or shell"},
	}
	for _, tt := range tests {
		_, err := h.client.Exec(ctxT(t), tt.req, nil, nil, nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error containing %q", tt.name, err, tt.want)
		}
		if got := agentapi.KindOf(err); got != tt.kind {
			t.Errorf("%s: got kind %s, want %s", tt.name, got, tt.kind)
		}
	}
}

func TestExecUser(t *testing.T) {
	testenv.RequireRoot(t)
	etc := t.TempDir()
	os.WriteFile(filepath.Join(etc, "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\nsandbox:x:1234:2345::/tmp:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(etc, "group"), []byte("root:x:0:\nsandbox:x:2345:\nextra:x:3456:sandbox\n"), 0o644)
	h := start(t, agent.Config{EtcDir: etc})
	out, _, st := run(t, h, agentapi.ExecRequest{Shell: "echo $(id -u) $(id -g) $(id -G) $HOME $USER", User: "sandbox"}, nil)
	if want := "1234 2345 2345 3456 /tmp sandbox\n"; out != want || st.Code != 0 {
		t.Errorf("got %q (%v), want %q", out, st, want)
	}
	// The init default user applies when a request names none.
	if _, err := h.client.Init(ctxT(t), agentapi.InitRequest{User: "1234:3456"}); err != nil {
		t.Fatal(err)
	}
	out, _, _ = run(t, h, agentapi.ExecRequest{Shell: "echo $(id -u):$(id -g)"}, nil)
	if out != "1234:3456\n" {
		t.Errorf("default user: got %q, want %q", out, "1234:3456\n")
	}
}

// TestExecBinaryAndLarge pushes random bytes (every byte value, 24 MiB)
// through stdin and back out of stdout and checks they arrive unchanged.
func TestExecBinaryAndLarge(t *testing.T) {
	h := start(t, agent.Config{})
	data := make([]byte, 24<<20)
	rand.Read(data)
	var out bytes.Buffer
	st, err := h.client.Exec(ctxT(t), agentapi.ExecRequest{Argv: []string{"cat"}}, bytes.NewReader(data), &out, nil)
	if err != nil || st.Code != 0 {
		t.Fatalf("cat: %v, %v", st, err)
	}
	if got, want := sha256.Sum256(out.Bytes()), sha256.Sum256(data); got != want || out.Len() != len(data) {
		t.Errorf("got %d bytes (sha256 %x), want %d bytes (sha256 %x)", out.Len(), got[:8], len(data), want[:8])
	}
}

// slowWriter sleeps before each of its first n writes.
type slowWriter struct {
	n     int
	delay time.Duration
	buf   bytes.Buffer
}

func (w *slowWriter) Write(p []byte) (int, error) {
	if w.n > 0 {
		w.n--
		time.Sleep(w.delay)
	}
	return w.buf.Write(p)
}

// TestExecSlowReader checks that a client reading slowly loses nothing: the
// process is held back by the full pipe instead of output being dropped.
func TestExecSlowReader(t *testing.T) {
	h := start(t, agent.Config{})
	w := &slowWriter{n: 20, delay: 20 * time.Millisecond}
	// seq writes numbered lines; any loss or reordering breaks the sequence.
	st, err := h.client.Exec(ctxT(t), agentapi.ExecRequest{Argv: []string{"seq", "1", "1000000"}}, nil, w, nil)
	if err != nil || st.Code != 0 {
		t.Fatalf("seq: %v, %v", st, err)
	}
	lines := strings.Split(strings.TrimSuffix(w.buf.String(), "\n"), "\n")
	if len(lines) != 1000000 {
		t.Fatalf("got %d lines, want 1000000", len(lines))
	}
	for i, l := range lines {
		if l != strconv.Itoa(i+1) {
			t.Fatalf("line %d is %q, want %q", i, l, strconv.Itoa(i+1))
		}
	}
}

// TestExecStreams checks that output arrives while the process runs, not
// when it ends.
func TestExecStreams(t *testing.T) {
	h := start(t, agent.Config{})
	e, err := h.client.Start(ctxT(t), agentapi.ExecRequest{Shell: "echo first; read x; echo second $x", Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		st, err := e.Wait(ctxT(t), pw, nil)
		if err == nil && st.Code != 0 {
			err = fmt.Errorf("status %v", st)
		}
		pw.CloseWithError(io.EOF)
		done <- err
	}()
	buf := make([]byte, 6)
	if _, err := io.ReadFull(pr, buf); err != nil || string(buf) != "first\n" {
		t.Fatalf("got %q, %v before sending stdin; want %q", buf, err, "first\n")
	}
	if _, err := e.Write([]byte("abc\n")); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(pr)
	if string(rest) != "second abc\n" {
		t.Errorf("got %q, want %q", rest, "second abc\n")
	}
	if err := <-done; err != nil {
		t.Error(err)
	}
}

func TestExecConcurrent(t *testing.T) {
	h := start(t, agent.Config{})
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out bytes.Buffer
			req := agentapi.ExecRequest{Shell: "sleep 0.1; echo $N; head -c 100000 /dev/zero | wc -c", Env: []string{"N=" + strconv.Itoa(i)}}
			st, err := h.client.Exec(ctxT(t), req, nil, &out, nil)
			if want := fmt.Sprintf("%d\n100000\n", i); err != nil || st.Code != 0 || out.String() != want {
				errs <- fmt.Errorf("exec %d: got %q, %v, %v; want %q", i, out.String(), st, err, want)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestExecTimeoutKillsGroup(t *testing.T) {
	h := start(t, agent.Config{})
	pidFile := filepath.Join(h.dir, "child.pid")
	start := time.Now()
	_, _, st := run(t, h, agentapi.ExecRequest{
		Shell:     fmt.Sprintf("sleep 100 & echo $! > %s; wait", pidFile),
		TimeoutMS: 300,
	}, nil)
	if !st.TimedOut || st.Signal != int(unix.SIGKILL) {
		t.Errorf("got %+v, want timed out by SIGKILL", st)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("a 300ms timeout took %v", d)
	}
	waitGone(t, readPid(t, pidFile))
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				return pid
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pid in %s after 10s", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestExecDisconnectKills(t *testing.T) {
	h := start(t, agent.Config{})
	pidFile := filepath.Join(h.dir, "child.pid")
	e, err := h.client.Start(ctxT(t), agentapi.ExecRequest{Shell: fmt.Sprintf("sleep 100 & echo $! > %s; wait", pidFile)})
	if err != nil {
		t.Fatal(err)
	}
	grandchild := readPid(t, pidFile)
	e.Close()
	waitGone(t, e.PID())
	waitGone(t, grandchild)
	waitExited(t, h, e.ID(), agentapi.ExitStatus{Code: -1, Signal: 9, SignalName: "SIGKILL"})
}

// TestExecCancelKills: cancelling Wait's context is a disconnect.
func TestExecCancelKills(t *testing.T) {
	h := start(t, agent.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	e, err := h.client.Start(ctx, agentapi.ExecRequest{Argv: []string{"sleep", "100"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Wait(ctx, nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait: got %v, want context.DeadlineExceeded", err)
	}
	waitGone(t, e.PID())
}

func waitExited(t *testing.T, h *harness, id string, want agentapi.ExitStatus) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ps, err := h.client.Processes(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			if p.ID == id && !p.Running {
				if p.Exit == nil || *p.Exit != want {
					t.Errorf("process %s ended with %+v, want %+v", id, p.Exit, want)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %s not listed as exited after 10s: %+v", id, ps)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestExecDetach(t *testing.T) {
	h := start(t, agent.Config{})
	marker := filepath.Join(h.dir, "done")
	e, err := h.client.Start(ctxT(t), agentapi.ExecRequest{
		Shell:  fmt.Sprintf("sleep 0.3; seq 1 100000; echo ok > %s", marker),
		Detach: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.Close() // disconnect at once; the process must live on
	waitExited(t, h, e.ID(), agentapi.ExitStatus{})
	if b, err := os.ReadFile(marker); err != nil || string(b) != "ok\n" {
		t.Errorf("detached process did not finish: %q, %v", b, err)
	}
}

func TestExecSignals(t *testing.T) {
	h := start(t, agent.Config{})
	// In-stream signal frame.
	e, err := h.client.Start(ctxT(t), agentapi.ExecRequest{Argv: []string{"sleep", "100"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SendSignal("term"); err != nil {
		t.Fatal(err)
	}
	st, err := e.Wait(ctxT(t), nil, nil)
	if err != nil || st.Signal != int(unix.SIGTERM) {
		t.Errorf("after a TERM frame: got %+v, %v; want killed by SIGTERM", st, err)
	}
	// Out-of-band signal by id, for a process whose stream is busy.
	e, err = h.client.Start(ctxT(t), agentapi.ExecRequest{Argv: []string{"sleep", "100"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.client.Signal(ctxT(t), e.ID(), "SIGUSR1"); err != nil {
		t.Fatal(err)
	}
	st, err = e.Wait(ctxT(t), nil, nil)
	if err != nil || st.Signal != int(unix.SIGUSR1) {
		t.Errorf("after Signal(USR1): got %+v, %v; want killed by SIGUSR1", st, err)
	}
	for _, tt := range []struct {
		id, sig string
		kind    agentapi.Kind
	}{
		{"p999999", "KILL", agentapi.KindNotFound},
		{e.ID(), "NOPE", agentapi.KindInvalid},
		{e.ID(), "KILL", agentapi.KindPrecondition}, // exited
	} {
		if err := h.client.Signal(ctxT(t), tt.id, tt.sig); agentapi.KindOf(err) != tt.kind {
			t.Errorf("Signal(%s, %s): got %v, want kind %s", tt.id, tt.sig, err, tt.kind)
		}
	}
}

// TestExecOutputGrace: a background child that keeps stdout open does not
// hold the exit status back for longer than OutputGrace.
func TestExecOutputGrace(t *testing.T) {
	h := start(t, agent.Config{OutputGrace: 200 * time.Millisecond})
	e, err := h.client.Start(ctxT(t), agentapi.ExecRequest{Shell: "sleep 30 & echo hi"})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Kill(-e.PID(), unix.SIGKILL)
	var out bytes.Buffer
	st, err := e.Wait(ctxT(t), &out, nil)
	if err != nil || st.Code != 0 || out.String() != "hi\n" {
		t.Errorf("got %q, %+v, %v; want %q and exit 0", out.String(), st, err, "hi\n")
	}
}

// TestExecDisconnectWhileStdinBlocked: a process that does not read its
// stdin stalls the agent's frame reading (backpressure); a client hanging up
// then must still kill it.
func TestExecDisconnectWhileStdinBlocked(t *testing.T) {
	h := start(t, agent.Config{})
	e, err := h.client.Start(ctxT(t), agentapi.ExecRequest{Argv: []string{"sleep", "100"}, Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	written := make(chan struct{})
	go func() {
		defer close(written)
		chunk := make([]byte, 1<<20)
		for range 64 { // far beyond pipe and socket buffers
			if _, err := e.Write(chunk); err != nil {
				return
			}
		}
	}()
	time.Sleep(300 * time.Millisecond) // let the buffers fill
	e.Close()
	<-written
	waitGone(t, e.PID())
}
