package vsock

import (
	"io"
	"net"
	"strings"
	"testing"
)

// The benchmarks move 1 MiB per iteration through one connection between
// a host unix socket and the test-driver guest (a goroutine playing the
// guest driver over guest memory; no KVM), beside a plain unix socket pair
// as the baseline for the same machine and moment.

const benchChunk = 1 << 20

func BenchmarkUnixSocketBaseline(b *testing.B) {
	a, c, err := socketPair(b.TempDir() + "/s")
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	defer c.Close()
	buf := make([]byte, benchChunk)
	b.SetBytes(benchChunk)
	b.ResetTimer()
	go func() {
		for range b.N {
			a.Write(buf)
		}
	}()
	if _, err := io.CopyN(io.Discard, c, int64(b.N)*benchChunk); err != nil {
		b.Fatal(err)
	}
}

func socketPair(path string) (*net.UnixConn, *net.UnixConn, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	a, err := net.DialUnix("unix", nil, ln.Addr().(*net.UnixAddr))
	if err != nil {
		return nil, nil, err
	}
	c, err := ln.AcceptUnix()
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	return a, c, nil
}

func BenchmarkHostToGuest(b *testing.B) {
	for _, rx := range []uint32{4096, abi64k} {
		b.Run(rxName(rx), func(b *testing.B) {
			dev, path := newDevice(b)
			g := newGuest(b, dev, defaultGuestBuf, rx)
			accepted := g.Listen(1)
			c, _, line := hostConnect(b, path, 1)
			if !strings.HasPrefix(line, "OK ") {
				b.Fatalf("handshake %q", line)
			}
			gc := <-accepted
			buf := make([]byte, benchChunk)
			b.SetBytes(benchChunk)
			b.ResetTimer()
			go func() {
				for range b.N {
					c.Write(buf)
				}
			}()
			if _, err := io.CopyN(io.Discard, gc, int64(b.N)*benchChunk); err != nil {
				b.Fatal(err)
			}
		})
	}
}

func BenchmarkGuestToHost(b *testing.B) {
	dev, path := newDevice(b)
	g := newGuest(b, dev, defaultGuestBuf, 4096)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path + "_1", Net: "unix"})
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	hcc := make(chan *net.UnixConn, 1)
	go func() {
		hc, err := ln.AcceptUnix()
		if err == nil {
			hcc <- hc
		}
	}()
	gc, err := g.Dial(1)
	if err != nil {
		b.Fatal(err)
	}
	hc := <-hcc
	defer hc.Close()
	buf := make([]byte, benchChunk)
	b.SetBytes(benchChunk)
	b.ResetTimer()
	go func() {
		for range b.N {
			gc.Write(buf)
		}
	}()
	if _, err := io.CopyN(io.Discard, hc, int64(b.N)*benchChunk); err != nil {
		b.Fatal(err)
	}
}

const abi64k = 64<<10 + 44

func rxName(n uint32) string {
	if n == abi64k {
		return "rx=64KiB+hdr"
	}
	return "rx=4KiB"
}
