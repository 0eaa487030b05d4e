package vsock

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	defaultGuestBuf = 256 << 10
	smallRxBuf      = 4096
)

func payload(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// hostConnect connects to the device's socket and asks for guest port.
func hostConnect(t testing.TB, path string, port uint32) (*net.UnixConn, *bufio.Reader, string) {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := r.ReadString('\n')
	c.SetReadDeadline(time.Time{})
	if err != nil && line == "" {
		return c, r, ""
	}
	return c, r, line
}

// echo copies everything from c back to c, then half-closes c.
func echo(t testing.TB, c *gconn) {
	if err := echoErr(c); err != nil {
		t.Errorf("guest echo: %v", err)
	}
}

func echoErr(c *gconn) error {
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			c.Write(buf[:n])
		}
		if err == io.EOF {
			c.CloseWrite()
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// roundTrip writes data to w while reading everything from r, and checks
// it came back intact.
func roundTrip(t testing.TB, w interface {
	Write([]byte) (int, error)
	CloseWrite() error
}, r io.Reader, data []byte) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := w.Write(data)
		if err == nil {
			err = w.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("writing: %v", err)
	}
	if len(got) != len(data) || sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("echo of %d bytes came back as %d bytes with a different hash", len(data), len(got))
	}
}

func TestHostInitiated(t *testing.T) {
	dev, path := newDevice(t)
	g := newGuest(t, dev, defaultGuestBuf, smallRxBuf)
	accepted := g.Listen(52)
	go func() {
		c := <-accepted
		echo(t, c)
		if err := c.Close(); err != nil {
			t.Errorf("guest close: %v", err)
		}
	}()
	c, r, line := hostConnect(t, path, 52)
	if line != fmt.Sprintf("OK %d\n", firstHostPort) {
		t.Fatalf("handshake answer %q, want %q", line, fmt.Sprintf("OK %d\n", firstHostPort))
	}
	roundTrip(t, c, r, payload(1, 3<<20/2))
}

func TestGuestInitiated(t *testing.T) {
	dev, path := newDevice(t)
	g := newGuest(t, dev, defaultGuestBuf, smallRxBuf)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path + "_1234", Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		hc, err := ln.AcceptUnix()
		if err != nil {
			t.Error(err)
			return
		}
		defer hc.Close()
		io.Copy(hc, hc)
		hc.CloseWrite()
	}()
	c, err := g.Dial(1234)
	if err != nil {
		t.Fatal(err)
	}
	data := payload(2, 5<<20/4)
	go func() {
		c.Write(data)
		c.CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("guest got %d bytes back, want %d identical bytes", len(got), len(data))
	}
	if err := c.Close(); err != nil {
		t.Errorf("guest close: %v", err)
	}
}

func TestManyStreams(t *testing.T) {
	dev, path := newDevice(t)
	g := newGuest(t, dev, 64<<10, smallRxBuf)
	const n = 24
	accepted := g.Listen(7)
	go func() {
		for range n {
			c := <-accepted
			go echo(t, c)
		}
	}()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path + "_9", Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			hc, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			go func() {
				defer hc.Close()
				io.Copy(hc, hc)
				hc.CloseWrite()
			}()
		}
	}()
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(2)
		go func() { // host-initiated
			defer wg.Done()
			c, r, line := hostConnect(t, path, 7)
			if !strings.HasPrefix(line, "OK ") {
				t.Errorf("stream %d: handshake %q", i, line)
				return
			}
			roundTrip(t, c, r, payload(uint64(100+i), 256<<10+i))
		}()
		go func() { // guest-initiated
			defer wg.Done()
			c, err := g.Dial(9)
			if err != nil {
				t.Errorf("guest stream %d: %v", i, err)
				return
			}
			data := payload(uint64(200+i), 200<<10+i)
			go func() {
				c.Write(data)
				c.CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("guest stream %d: %d bytes back (err %v), want %d identical", i, len(got), err, len(data))
			}
			c.Close()
		}()
	}
	donec := make(chan struct{})
	go func() { wg.Wait(); close(donec) }()
	select {
	case <-donec:
	case <-time.After(60 * time.Second):
		t.Fatal("streams stalled for a minute")
	}
}

// TestBackpressureHostToGuest: a guest that does not read must stop the
// host writer instead of making the device buffer the stream.
func TestBackpressureHostToGuest(t *testing.T) {
	dev, path := newDevice(t)
	const guestBuf = 64 << 10
	g := newGuest(t, dev, guestBuf, smallRxBuf)
	accepted := g.Listen(5)
	c, r, line := hostConnect(t, path, 5)
	if !strings.HasPrefix(line, "OK ") {
		t.Fatalf("handshake %q", line)
	}
	_ = r
	gc := <-accepted
	data := payload(5, 4<<20)
	var mu sync.Mutex
	written := 0
	go func() {
		for off := 0; off < len(data); off += 16 << 10 {
			n, err := c.Write(data[off : off+16<<10])
			mu.Lock()
			written += n
			mu.Unlock()
			if err != nil {
				return
			}
		}
		c.CloseWrite()
	}()
	time.Sleep(500 * time.Millisecond)
	mu.Lock()
	stalled := written
	mu.Unlock()
	// Guest buffer + one device chunk + the kernel's socket buffers; far
	// below the 4 MiB the host wants to write.
	if stalled >= 2<<20 {
		t.Errorf("host wrote %d bytes to a guest that reads nothing; want backpressure well below %d", stalled, 2<<20)
	}
	// A slow reader then gets everything, intact and in order.
	got := make([]byte, 0, len(data))
	buf := make([]byte, 8<<10)
	for len(got) < len(data) {
		n, err := gc.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("guest read after %d bytes: %v", len(got), err)
		}
		if len(got)%(512<<10) < len(buf) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if !bytes.Equal(got, data) {
		t.Fatal("slow reader got corrupted data")
	}
	if g.maxRbuf > guestBuf {
		t.Errorf("guest buffered %d bytes, above its %d credit", g.maxRbuf, guestBuf)
	}
	t.Logf("host stalled after %d bytes", stalled)
}

// TestBackpressureGuestToHost: a host that does not read must stop the
// guest's sends through credit, with the device holding at most bufAlloc.
func TestBackpressureGuestToHost(t *testing.T) {
	dev, path := newDevice(t)
	g := newGuest(t, dev, defaultGuestBuf, smallRxBuf)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path + "_6", Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hcc := make(chan *net.UnixConn, 1)
	go func() {
		hc, err := ln.AcceptUnix()
		if err == nil {
			hcc <- hc
		}
	}()
	c, err := g.Dial(6)
	if err != nil {
		t.Fatal(err)
	}
	hc := <-hcc
	defer hc.Close()
	data := payload(6, 4<<20)
	c.Write(data)
	c.CloseWrite()
	time.Sleep(500 * time.Millisecond)
	g.mu.Lock()
	sent, unsent := c.txCnt, len(c.wbuf)
	g.mu.Unlock()
	if unsent == 0 || sent >= 2<<20 {
		t.Errorf("guest pushed %d bytes (%d left) to a host that reads nothing; want credit to stop it well below %d", sent, unsent, 2<<20)
	}
	got, err := io.ReadAll(iotestSlow(hc))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("host got %d bytes, want %d identical", len(got), len(data))
	}
	t.Logf("guest stalled after %d bytes", sent)
}

// iotestSlow reads in small pieces with pauses.
func iotestSlow(r io.Reader) io.Reader { return &slowReader{r: r} }

type slowReader struct {
	r io.Reader
	n int
}

func (s *slowReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p[:min(len(p), 32<<10)])
	s.n += n
	if s.n >= 1<<20 {
		s.n = 0
		time.Sleep(20 * time.Millisecond)
	}
	return n, err
}

// TestCreditOnlyWhenAsked: a guest that grants credit only in answer to
// CREDIT_REQUEST (the probe guest does) must still receive a stream larger
// than its buffer; the device has to ask each time it runs out.
func TestCreditOnlyWhenAsked(t *testing.T) {
	dev, path := newDevice(t)
	g := newGuest(t, dev, 16<<10, smallRxBuf)
	g.mu.Lock()
	g.onlyAskedCredit = true
	g.mu.Unlock()
	accepted := g.Listen(5)
	c, _, line := hostConnect(t, path, 5)
	if !strings.HasPrefix(line, "OK ") {
		t.Fatalf("handshake %q", line)
	}
	gc := <-accepted
	data := payload(13, 1<<20)
	go func() {
		c.Write(data)
		c.CloseWrite()
	}()
	got, err := io.ReadAll(gc)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("guest read %d of %d bytes (err %v)", len(got), len(data), err)
	}
}
