package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/fcapi"
)

// startVsockProbe starts the probe with a vsock device whose host socket
// is returned; extra goes on the probe's command line.
func startVsockProbe(t *testing.T, extra string) (*vmmProc, string) {
	t.Helper()
	p := startVMM(t)
	c := p.client(t)
	uds := filepath.Join(t.TempDir(), "v.sock")
	if err := c.PutBootSource(ctx(t), fcapi.BootSource{KernelImagePath: probeELF(t), BootArgs: "probe.pages=1 probe.ticks=0 probe.spin=1000 " + extra}); err != nil {
		t.Fatal(err)
	}
	if err := c.PutVsock(ctx(t), fcapi.Vsock{GuestCID: 3, UDSPath: uds}); err != nil {
		t.Fatal(err)
	}
	return p, uds
}

// dialGuest opens a host-initiated connection to guest port port through
// Firecracker's protocol: CONNECT <port>\n, answered by OK <hostport>\n.
func dialGuest(t testing.TB, uds string, port int) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("unix", uds)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "CONNECT %d\n", port)
	conn.SetReadDeadline(time.Now().Add(guestWait))
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "OK ") {
		t.Fatalf("CONNECT %d: got %q, %v, want \"OK <port>\\n\"", port, line, err)
	}
	conn.SetReadDeadline(time.Time{})
	return conn, r
}

// echo sends payload on a connection to the probe's echo port and checks
// that the same bytes come back.
func echo(t testing.TB, conn net.Conn, r *bufio.Reader, payload []byte) error {
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, werr = conn.Write(payload)
	}()
	got := make([]byte, len(payload))
	conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
	_, rerr := io.ReadFull(r, got)
	wg.Wait()
	if werr != nil {
		return fmt.Errorf("writing: %w", werr)
	}
	if rerr != nil {
		return fmt.Errorf("reading the echo: %w", rerr)
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("echo of %d bytes differs", len(payload))
	}
	return nil
}

// TestVsockEcho connects to the probe's echo port from the host, four
// connections at once, and checks every byte comes back; then a
// guest-initiated connection reaches a host listener at <uds>_<port>.
func TestVsockEcho(t *testing.T) {
	p, uds := startVsockProbe(t, "probe.vsock.connect=5000")
	l, err := net.Listen("unix", uds+"_5000")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := p.client(t).InstanceStart(ctx(t)); err != nil {
		t.Fatal(err)
	}

	// Guest-initiated: the probe connects to port 5000 and says hello.
	l.(*net.UnixListener).SetDeadline(time.Now().Add(guestWait))
	g, err := l.Accept()
	if err != nil {
		t.Fatalf("no guest-initiated connection: %v\nstdout:\n%s", err, p.stdout.String())
	}
	hello := make([]byte, len("hello from probe\n"))
	g.SetReadDeadline(time.Now().Add(guestWait))
	if _, err := io.ReadFull(g, hello); err != nil || string(hello) != "hello from probe\n" {
		t.Fatalf("guest-initiated connection: got %q, %v", hello, err)
	}
	g.Write([]byte("hi probe\n"))
	p.waitOutput(t, "probe: vsock got hi probe\n", guestWait)
	g.Close()

	// Host-initiated, concurrent: open every connection first (the device
	// gives the guest two seconds to accept each), then echo on all.
	const conns, size = 4, 32 << 10
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	type stream struct {
		conn net.Conn
		r    *bufio.Reader
	}
	var streams []stream
	for range conns {
		conn, r := dialGuest(t, uds, 1024)
		defer conn.Close()
		streams = append(streams, stream{conn, r})
	}
	for i, s := range streams {
		payload := make([]byte, size)
		rng := rand.New(rand.NewPCG(uint64(i), 7))
		for j := range payload {
			payload[j] = byte(rng.Uint32())
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := echo(t, s.conn, s.r, payload); err != nil {
				errs <- fmt.Errorf("connection %d: %w", i, err)
			}
			s.conn.Close()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	p.waitOutput(t, fmt.Sprintf("bytes=%d\n", size), guestWait)
	if n := strings.Count(p.stdout.String(), "probe: vsock accept port="); n != conns {
		t.Errorf("guest accepted %d connections, want %d", n, conns)
	}

	// A connection survives a pause: Firecracker pauses vCPUs, not
	// connections.
	conn2, r2 := dialGuest(t, uds, 1024)
	defer conn2.Close()
	if err := echo(t, conn2, r2, []byte("before pause")); err != nil {
		t.Fatal(err)
	}
	c := p.client(t)
	if err := c.Pause(ctx(t)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if err := c.Resume(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := echo(t, conn2, r2, []byte("after resume")); err != nil {
		t.Errorf("echo after pause and resume: %v", err)
	}

	// A port nobody listens on is refused.
	conn, err := net.Dial("unix", uds)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "CONNECT 7\n")
	conn.SetReadDeadline(time.Now().Add(guestWait))
	if line, err := bufio.NewReader(conn).ReadString('\n'); err == nil {
		t.Errorf("CONNECT to a closed guest port: got %q, want the connection closed", line)
	}
}
