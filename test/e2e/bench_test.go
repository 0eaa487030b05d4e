package e2e

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/testenv"
)

// waitSocket polls until the API answers GET /, dialing every 100µs (the
// client's WaitReady backs off to 20 ms, too coarse to measure with).
func waitSocket(b *testing.B, sock string, c *fcapi.Client) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if conn, err := net.Dial("unix", sock); err == nil {
			conn.Close()
			if _, err := c.InstanceInfo(context.Background()); err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			b.Fatal("API not ready after 10s")
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// BenchmarkAPIReady measures process start (exec) until GET / answers on
// the API socket; Firecracker's figure on this machine is 1-2 ms.
func BenchmarkAPIReady(b *testing.B) {
	bin := thawVMM(b)
	dir := b.TempDir()
	i := 0
	for b.Loop() {
		i++
		sock := filepath.Join(dir, fmt.Sprintf("api%d.sock", i))
		c := fcapi.NewClient(sock)
		cmd := exec.Command(bin, "--api-sock", sock, "--level", "Off")
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		waitSocket(b, sock, c)
		b.StopTimer()
		c.Close()
		cmd.Process.Kill()
		cmd.Wait()
		b.StartTimer()
	}
}

// firstOutput closes ch at the first byte written.
type firstOutput struct {
	once sync.Once
	ch   chan struct{}
}

func (f *firstOutput) Write(p []byte) (int, error) {
	f.once.Do(func() { close(f.ch) })
	return len(p), nil
}

// BenchmarkInstanceStartToOutput measures PUT /actions InstanceStart until
// the probe guest's first byte on the VMM's stdout (128 MiB, 1 vCPU);
// Firecracker's figure for a probe guest here is 8-21 ms.
func BenchmarkInstanceStartToOutput(b *testing.B) {
	testenv.RequireKVM(b)
	bin := thawVMM(b)
	kernel := probeELF(b)
	dir := b.TempDir()
	i := 0
	for b.Loop() {
		b.StopTimer()
		i++
		sock := filepath.Join(dir, fmt.Sprintf("api%d.sock", i))
		c := fcapi.NewClient(sock)
		out := &firstOutput{ch: make(chan struct{})}
		cmd := exec.Command(bin, "--api-sock", sock, "--level", "Off")
		cmd.Stdout = out
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		waitSocket(b, sock, c)
		ctx := context.Background()
		if err := c.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: kernel, BootArgs: "probe.pages=1 probe.ticks=0"}); err != nil {
			b.Fatal(err)
		}
		if err := c.PutMachineConfig(ctx, fcapi.MachineConfig{VcpuCount: 1, MemSizeMib: 128}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := c.InstanceStart(ctx); err != nil {
			b.Fatal(err)
		}
		select {
		case <-out.ch:
		case <-time.After(guestWait):
			b.Fatal("no guest output after 30s")
		}
		b.StopTimer()
		c.Close()
		cmd.Process.Kill()
		cmd.Wait()
		b.StartTimer()
	}
}

// BenchmarkExecBaseline execs /bin/true and waits: the cost of starting any
// process on this machine, to read BenchmarkAPIReady against.
func BenchmarkExecBaseline(b *testing.B) {
	for b.Loop() {
		if err := exec.Command("/bin/true").Run(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVsockEcho measures host → guest → host throughput over
// virtio-vsock: 256 KiB echoed by the probe guest per iteration, one
// connection. The probe copies with rep movsb, but PVM emulates the guest,
// so this bounds the device path from below rather than measuring it.
func BenchmarkVsockEcho(b *testing.B) {
	testenv.RequireKVM(b)
	bin := thawVMM(b)
	dir := b.TempDir()
	sock, uds := filepath.Join(dir, "api.sock"), filepath.Join(dir, "v.sock")
	c := fcapi.NewClient(sock)
	defer c.Close()
	cmd := exec.Command(bin, "--api-sock", sock, "--level", "Off")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	waitSocket(b, sock, c)
	ctx := context.Background()
	if err := c.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: probeELF(b), BootArgs: "probe.pages=1 probe.ticks=0 probe.spin=100"}); err != nil {
		b.Fatal(err)
	}
	if err := c.PutVsock(ctx, fcapi.Vsock{GuestCID: 3, UDSPath: uds}); err != nil {
		b.Fatal(err)
	}
	if err := c.InstanceStart(ctx); err != nil {
		b.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	conn, r := dialGuest(b, uds, 1024)
	defer conn.Close()
	payload := make([]byte, 256<<10)
	for i := range payload {
		payload[i] = byte(i * 13)
	}
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	for b.Loop() {
		if err := echo(b, conn, r, payload); err != nil {
			b.Fatal(err)
		}
	}
}
