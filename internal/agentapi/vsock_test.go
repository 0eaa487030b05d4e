package agentapi

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeVMM listens on a unix socket like Firecracker's vsock device and
// answers each connection with reply(line) after reading the CONNECT line.
// With reply returning "", it closes the connection; otherwise, after the
// reply, it echoes whatever the client sends.
func fakeVMM(t *testing.T, reply func(line string) string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "v.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				r := reply(strings.TrimSuffix(line, "\n"))
				if r == "" {
					return
				}
				if _, err := io.WriteString(c, r); err != nil {
					return
				}
				io.Copy(c, br)
			}()
		}
	}()
	return path
}

func TestDialVsockUDS(t *testing.T) {
	var gotLine string
	path := fakeVMM(t, func(line string) string { gotLine = line; return "OK 1073741824\n" })
	ctx := context.Background()
	c, err := DialVsockUDS(ctx, path, 10000)
	if err != nil {
		t.Fatalf("DialVsockUDS: %v", err)
	}
	defer c.Close()
	if gotLine != "CONNECT 10000" {
		t.Errorf("VMM got %q, want %q", gotLine, "CONNECT 10000")
	}
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Fatal(err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != "ping\n" {
		t.Errorf("echo through the stream: got %q, %v; want %q", got, err, "ping\n")
	}
}

func TestDialVsockUDSErrors(t *testing.T) {
	tests := []struct {
		name  string
		reply string
		want  string
	}{
		{"closed", "", "is the agent listening on guest port 10000"},
		{"garbage", "HTTP/1.1 400 Bad Request\n", `got reply "HTTP/1.1 400 Bad Request", want "OK <port>"`},
		{"bad port", "OK port\n", `got reply "OK port"`},
		{"no newline", strings.Repeat("x", 100), "longer than 64 bytes"},
	}
	for _, tt := range tests {
		path := fakeVMM(t, func(string) string { return tt.reply })
		_, err := DialVsockUDS(context.Background(), path, 10000)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error containing %q", tt.name, err, tt.want)
		}
		if err != nil && !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s: got kind %s, want %s", tt.name, KindOf(err), KindUnavailable)
		}
	}
	_, err := DialVsockUDS(context.Background(), filepath.Join(t.TempDir(), "missing.sock"), 1)
	if err == nil || !strings.Contains(err.Error(), "connecting to vsock socket") {
		t.Errorf("missing socket: got %v, want a connecting error", err)
	}
}

func TestDialVsockUDSDeadline(t *testing.T) {
	// A VMM that never answers: the context's deadline ends the wait.
	release := make(chan struct{})
	defer close(release)
	path := fakeVMM(t, func(string) string { <-release; return "" })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := DialVsockUDS(ctx, path, 10000)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("DialVsockUDS took %v after a 100ms deadline", d)
	}
}

func FuzzParseVsockOK(f *testing.F) {
	f.Add("OK 52")
	f.Add("OK ")
	f.Add("NO 5")
	f.Fuzz(func(t *testing.T, line string) {
		if err := parseVsockOK(line); err == nil && !strings.HasPrefix(line, "OK ") {
			t.Fatalf("accepted %q", line)
		}
	})
}
