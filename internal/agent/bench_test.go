package agent_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/thawvm/thaw/internal/agent"
	"github.com/thawvm/thaw/internal/agentapi"
)

// vsockProxy stands in for Firecracker's host-side vsock socket: it accepts
// on a unix socket, expects "CONNECT <port>\n", answers "OK <port>\n" and
// splices the connection to the agent's unix socket. Benchmarks through it
// include the handshake and the extra hop a VMM adds, without a VM.
func vsockProxy(tb testing.TB, agentSock string) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "vsock")
	if err != nil {
		tb.Fatal(err)
	}
	path := filepath.Join(dir, "v.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	tb.Cleanup(func() { ln.Close(); wg.Wait(); os.RemoveAll(dir) })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				line, err := br.ReadString('\n')
				port, ok := strings.CutPrefix(strings.TrimSpace(line), "CONNECT ")
				if err != nil || !ok {
					return
				}
				up, err := net.Dial("unix", agentSock)
				if err != nil {
					return
				}
				defer up.Close()
				io.WriteString(c, "OK "+port+"\n")
				done := make(chan struct{})
				go func() {
					io.Copy(up, br)
					up.(*net.UnixConn).CloseWrite()
					close(done)
				}()
				io.Copy(c, up)
				c.(*net.UnixConn).CloseWrite()
				<-done
			}()
		}
	}()
	return path
}

// transports are the two ways the benchmarks reach the agent.
func transports(b *testing.B) map[string]*agentapi.Client {
	h := start(b, agent.Config{})
	proxy := vsockProxy(b, h.sock)
	vc := agentapi.NewClient(agentapi.VsockDialer(proxy, agentapi.DefaultVsockPort))
	b.Cleanup(func() { vc.Close() })
	return map[string]*agentapi.Client{"unix": h.client, "vsock-uds": vc}
}

// BenchmarkExecTrue is the round trip of running /bin/true: request,
// fork+exec, exit status back.
func BenchmarkExecTrue(b *testing.B) {
	for _, name := range []string{"unix", "vsock-uds"} {
		b.Run(name, func(b *testing.B) {
			c := transports(b)[name]
			ctx := context.Background()
			req := agentapi.ExecRequest{Argv: []string{"/bin/true"}}
			for b.Loop() {
				st, err := c.Exec(ctx, req, nil, nil, nil)
				if err != nil || st.Code != 0 {
					b.Fatalf("exec: %v, %v", st, err)
				}
			}
		})
	}
}

// BenchmarkExecOutput streams 256 MiB of a process's stdout to the client.
func BenchmarkExecOutput(b *testing.B) {
	const size = 256 << 20
	for _, name := range []string{"unix", "vsock-uds"} {
		b.Run(name, func(b *testing.B) {
			c := transports(b)[name]
			ctx := context.Background()
			req := agentapi.ExecRequest{Argv: []string{"head", "-c", strconv.Itoa(size), "/dev/zero"}}
			b.SetBytes(size)
			for b.Loop() {
				var n countWriter
				st, err := c.Exec(ctx, req, nil, &n, nil)
				if err != nil || st.Code != 0 || n != size {
					b.Fatalf("exec: %v, %v, %d bytes", st, err, n)
				}
			}
		})
	}
}

type countWriter int64

func (w *countWriter) Write(p []byte) (int, error) { *w += countWriter(len(p)); return len(p), nil }

// BenchmarkUpload uploads 64 MiB files.
func BenchmarkUpload(b *testing.B) {
	const size = 64 << 20
	data := make([]byte, size)
	rand.Read(data)
	for _, name := range []string{"unix", "vsock-uds"} {
		b.Run(name, func(b *testing.B) {
			c := transports(b)[name]
			ctx := context.Background()
			dst := filepath.Join(b.TempDir(), "upload")
			b.SetBytes(size)
			for b.Loop() {
				if _, err := c.Upload(ctx, dst, bytes.NewReader(data), agentapi.UploadOptions{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
