package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/thawvm/thaw/internal/agentapi"
	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/test/linux/wire"
)

// devicesStep boots a guest with an ext4 drive and a vsock device. The
// guest writes a file to the drive and sends a payload to the host over a
// connection it opens (forwarded to <uds>_<port>); the host sends one over
// a connection it opens (CONNECT <port>) and checks the echo; the real
// guest agent answers health and round-trips a file. After the
// guest reboots, the drive goes to the results for the host to read.
func devicesStep(ctx context.Context, c config, r *Results) error {
	img := filepath.Join(c.work, "disk.ext4")
	if err := copyFile(c.disk, img); err != nil {
		return err
	}
	uds := filepath.Join(c.work, "v.sock")
	out, err := net.Listen("unix", fmt.Sprintf("%s_%d", uds, wire.HostPort))
	if err != nil {
		return err
	}
	defer out.Close()
	fromGuest := make(chan error, 1)
	go func() { fromGuest <- serveGuestPayload(out, r) }()

	v, err := startVM(ctx, c.vmm, c.work, c.results, "devices")
	if err != nil {
		return err
	}
	defer v.kill()
	if err := v.client.PutDrive(ctx, fcapi.Drive{DriveID: "data", PathOnHost: img, IsRootDevice: false}); err != nil {
		return err
	}
	if err := v.client.PutVsock(ctx, fcapi.Vsock{GuestCID: 3, UDSPath: uds}); err != nil {
		return err
	}
	if _, err := boot(ctx, v, c, fmt.Sprintf(fast+" thaw.disk=1 thaw.vsock=both thaw.agent=1 thaw.then=wait thaw.seed=%d", wire.Seed)); err != nil {
		return err
	}
	if _, err := v.waitFor(regexp.MustCompile(`thaw-guestinit: disk ok`), c.timeout); err != nil {
		return err
	}
	if _, err := v.waitFor(regexp.MustCompile(`thaw-guestinit: vsock to host ok`), c.timeout); err != nil {
		return err
	}
	select {
	case err := <-fromGuest:
		if err != nil {
			return fmt.Errorf("guest-initiated vsock: %w", err)
		}
	case <-time.After(c.timeout):
		return fmt.Errorf("guest-initiated vsock: the host side did not finish in %v", c.timeout)
	}
	if err := echoThroughGuest(ctx, uds, r); err != nil {
		return fmt.Errorf("host-initiated vsock: %w", err)
	}
	if err := agentRoundTrip(ctx, uds, r); err != nil {
		return fmt.Errorf("thaw-agent over vsock: %w", err)
	}
	if err := rebootByConsole(v, c.timeout); err != nil {
		return err
	}
	return copyFile(img, filepath.Join(c.results, "disk.ext4"))
}

// serveGuestPayload answers the guest's connection to wire.HostPort: it
// reads the payload, checks it is the pattern for wire.Seed+1 and answers its
// SHA-256 (the guest checks that too).
func serveGuestPayload(l net.Listener, r *Results) error {
	conn, err := l.Accept()
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Minute))
	t0 := time.Now()
	got, err := wire.ReadFrame(conn)
	if err != nil {
		return err
	}
	d := time.Since(t0)
	if want := wire.Pattern(wire.Seed+1, wire.PayloadSize); !bytes.Equal(got, want) {
		return fmt.Errorf("the guest's %d-byte payload differs from the %d-byte pattern it should send (first difference at byte %d)", len(got), len(want), firstDiff(got, want))
	}
	r.VsockGuestToHostMiBps = float64(len(got)) / (1 << 20) / d.Seconds()
	sum := sha256.Sum256(got)
	return wire.WriteFrame(conn, sum[:])
}

// echoThroughGuest connects to the guest's listener through the VMM's
// socket (Firecracker's CONNECT protocol), sends a payload and checks the
// echo.
func echoThroughGuest(ctx context.Context, uds string, r *Results) error {
	mibps, err := echo(ctx, uds)
	if err != nil {
		return err
	}
	r.VsockEchoMiBps = mibps
	fmt.Printf("driver: vsock: guest → host %.1f MiB/s, host → guest → host echo %.1f MiB/s (%d-byte payloads)\n", r.VsockGuestToHostMiBps, r.VsockEchoMiBps, wire.PayloadSize)
	return nil
}

// echo opens a connection to the guest's echo listener through the VMM's
// socket uds, sends one payload, checks the echo byte for byte and returns
// the rate, both directions counted.
func echo(ctx context.Context, uds string) (float64, error) {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := agentapi.DialVsockUDS(dctx, uds, wire.GuestPort)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Minute))
	p := wire.Pattern(wire.Seed+2, wire.PayloadSize)
	t0 := time.Now()
	errc := make(chan error, 1)
	go func() { errc <- wire.WriteFrame(conn, p) }()
	got, err := wire.ReadFrame(conn)
	if werr := <-errc; werr != nil && err == nil {
		err = werr
	}
	if err != nil {
		return 0, err
	}
	d := time.Since(t0)
	if !bytes.Equal(got, p) {
		return 0, fmt.Errorf("echo of %d bytes came back as %d bytes differing at byte %d", len(p), len(got), firstDiff(got, p))
	}
	return float64(2*len(p)) / (1 << 20) / d.Seconds(), nil
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copying %s to %s: %w", src, dst, err)
	}
	return out.Close()
}

// agentHealth waits until the guest's thaw-agent answers health through
// the VMM's socket uds, as thawd does after starting or restoring a sandbox.
func agentHealth(ctx context.Context, uds string) (agentapi.Health, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	ac := agentapi.NewClient(agentapi.VsockDialer(uds, agentapi.DefaultVsockPort))
	defer ac.Close()
	return ac.WaitReady(ctx, 20*time.Millisecond)
}

// agentRoundTrip talks to the guest's thaw-agent the way thawd does
// (agentapi over Firecracker's vsock socket): health, then a 1.5 MiB file
// uploaded and downloaded again, byte for byte.
func agentRoundTrip(ctx context.Context, uds string, r *Results) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	ac := agentapi.NewClient(agentapi.VsockDialer(uds, agentapi.DefaultVsockPort))
	defer ac.Close()
	h, err := ac.WaitReady(ctx, 100*time.Millisecond)
	if err != nil {
		return err
	}
	p := wire.Pattern(wire.Seed+4, wire.PayloadSize)
	if _, err := ac.Upload(ctx, "/agent.bin", bytes.NewReader(p), agentapi.UploadOptions{}); err != nil {
		return err
	}
	rc, _, err := ac.Download(ctx, "/agent.bin")
	if err != nil {
		return err
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return err
	}
	if !bytes.Equal(got, p) {
		return fmt.Errorf("downloaded %d bytes differing at byte %d from the %d uploaded", len(got), firstDiff(got, p), len(p))
	}
	r.AgentProtocol = h.Protocol
	fmt.Printf("driver: thaw-agent (protocol %d, %s) answered health and round-tripped %d bytes\n", h.Protocol, h.Version, len(p))
	return nil
}
