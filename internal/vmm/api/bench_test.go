package api

import (
	"context"
	"net"
	"path/filepath"
	"testing"

	"github.com/thawvm/thaw/internal/fcapi"
)

// BenchmarkRoundTrip measures one API call from fcapi.Client to Server over
// a unix socket (kept alive), with a Machine that does nothing: the API
// layer's share of every call thawd makes.
func BenchmarkRoundTrip(b *testing.B) {
	ctx := context.Background()
	calls := []struct {
		name string
		call func(c *fcapi.Client) error
	}{
		{"GET_instance", func(c *fcapi.Client) error { _, err := c.InstanceInfo(ctx); return err }},
		{"PUT_machine-config", func(c *fcapi.Client) error {
			return c.PutMachineConfig(ctx, fcapi.MachineConfig{VcpuCount: 2, MemSizeMib: 256})
		}},
		{"PUT_drive", func(c *fcapi.Client) error {
			return c.PutDrive(ctx, fcapi.Drive{DriveID: "rootfs", PathOnHost: "/r", IsRootDevice: true})
		}},
	}
	for _, bc := range calls {
		b.Run(bc.name, func(b *testing.B) {
			sock := filepath.Join(b.TempDir(), "api.sock")
			l, err := net.Listen("unix", sock)
			if err != nil {
				b.Fatal(err)
			}
			sctx, cancel := context.WithCancel(ctx)
			s := NewServer(newFakeMachine(b), testInfo, testLogger(b))
			done := make(chan error, 1)
			go func() { done <- s.Serve(sctx, l) }()
			c := fcapi.NewClient(sock)
			if err := c.WaitReady(ctx); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if err := bc.call(c); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			c.Close()
			cancel()
			<-done
		})
	}
}

// BenchmarkServeReady measures from binding the socket to the first
// successful WaitReady: the in-process part of "process start → API ready".
func BenchmarkServeReady(b *testing.B) {
	dir := b.TempDir()
	for b.Loop() {
		sock := filepath.Join(dir, "api.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		s := NewServer(newFakeMachine(b), testInfo, testLogger(b))
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx, l) }()
		c := fcapi.NewClient(sock)
		if err := c.WaitReady(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		c.Close()
		cancel()
		<-done
		b.StartTimer()
	}
}
