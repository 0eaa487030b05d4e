package api

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/fcapi"
)

// served is a Server running Serve on a real unix socket, with the fcapi
// client the daemon uses talking to it.
type served struct {
	s      *Server
	m      *fakeMachine
	c      *fcapi.Client
	sock   string
	cancel context.CancelFunc
	done   chan error
}

func serve(t *testing.T, m *fakeMachine) *served {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sv := &served{s: NewServer(m, testInfo, testLogger(t)), m: m, c: fcapi.NewClient(sock), sock: sock, cancel: cancel, done: make(chan error, 1)}
	go func() { sv.done <- sv.s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		sv.c.Close()
		sv.wait(t)
	})
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := sv.c.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	return sv
}

// wait returns what Serve returned, failing the test if it does not return.
func (sv *served) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-sv.done:
		sv.done <- err // keep it for later callers
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return within 10s")
		return nil
	}
}

func TestServeWithClient(t *testing.T) {
	ctx := context.Background()
	sv := serve(t, newFakeMachine(t))
	c := sv.c
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.PutMachineConfig(ctx, fcapi.MachineConfig{VcpuCount: 2, MemSizeMib: 512, TrackDirtyPages: true}))
	must(c.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: "/vmlinux", InitrdPath: "/initrd"}))
	must(c.PutDrive(ctx, fcapi.Drive{DriveID: "rootfs", PathOnHost: "/r.ext4", IsRootDevice: true, PartUUID: "0eaa91a0-01"}))
	must(c.PutVsock(ctx, fcapi.Vsock{GuestCID: 52, UDSPath: "/v.sock"}))
	err := c.PutNetworkInterface(ctx, fcapi.NetworkInterface{IfaceID: "eth0", HostDevName: "tap0"})
	var ae *fcapi.APIError
	if !errors.As(err, &ae) || ae.StatusCode != http.StatusBadRequest || !strings.Contains(ae.FaultMessage, "network interfaces") {
		t.Errorf("PutNetworkInterface error = %v, want an APIError 400 about network interfaces", err)
	}
	mc, err := c.MachineConfig(ctx)
	must(err)
	if want := (fcapi.MachineConfig{VcpuCount: 2, MemSizeMib: 512, TrackDirtyPages: true, HugePages: fcapi.HugePagesNone}); mc != want {
		t.Errorf("MachineConfig() = %+v, want %+v", mc, want)
	}
	must(c.InstanceStart(ctx))
	err = c.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: "/other"})
	if !errors.As(err, &ae) || ae.StatusCode != 400 || ae.FaultMessage != "The requested operation is not supported after starting the microVM." {
		t.Errorf("PutBootSource after start: error %v, want Firecracker's post-boot 400", err)
	}
	must(c.Pause(ctx))
	must(c.CreateSnapshot(ctx, fcapi.SnapshotCreateParams{SnapshotPath: "/s", MemFilePath: "/m"}))
	must(c.Resume(ctx))
	must(c.SendCtrlAltDel(ctx))
	info, err := c.InstanceInfo(ctx)
	must(err)
	if want := (fcapi.InstanceInfo{AppName: "thaw-vmm", ID: "vm1", State: fcapi.StateRunning, VMMVersion: "0.1.0-test"}); info != want {
		t.Errorf("InstanceInfo() = %+v, want %+v", info, want)
	}
	want := []string{"SetMachineConfig", "SetBootSource", "SetDrive", "SetVsock", "Start", "Pause", "CreateSnapshot", "Resume", "SendCtrlAltDel"}
	if got := sv.m.callLog(); !reflect.DeepEqual(got, want) {
		t.Errorf("Machine calls = %v, want %v", got, want)
	}

	sv.cancel()
	if err := sv.wait(t); err != nil {
		t.Errorf("Serve after cancel returned %v, want nil", err)
	}
	if conn, err := net.Dial("unix", sv.sock); err == nil {
		conn.Close()
		t.Error("the API socket still accepts connections after Serve returned")
	}
}

func TestServeFailedLoad(t *testing.T) {
	m := newFakeMachine(t)
	m.fail["LoadSnapshot"] = errors.New("vmstate: wrong magic, not a thaw-vmm snapshot")
	sv := serve(t, m)
	err := sv.c.LoadSnapshot(context.Background(), fcapi.SnapshotLoadParams{SnapshotPath: "/s",
		MemBackend: &fcapi.MemBackend{BackendType: fcapi.MemBackendFile, BackendPath: "/m"}})
	var ae *fcapi.APIError
	if !errors.As(err, &ae) || ae.StatusCode != 400 || ae.FaultMessage != "Load snapshot error: vmstate: wrong magic, not a thaw-vmm snapshot" {
		t.Fatalf("LoadSnapshot error = %v, want a 400 APIError with the Machine's reason", err)
	}
	serr := sv.wait(t)
	if serr == nil || !strings.Contains(serr.Error(), "wrong magic") {
		t.Errorf("Serve returned %v, want the load error", serr)
	}
}

// TestServeStopCancelsOperation checks that stopping Serve cancels a
// Machine operation in flight.
func TestServeStopCancelsOperation(t *testing.T) {
	m := newFakeMachine(t)
	m.block, m.blocked = make(chan struct{}), make(chan struct{})
	sv := serve(t, m)
	startErr := make(chan error, 1)
	go func() { startErr <- sv.c.InstanceStart(context.Background()) }()
	<-m.blocked
	sv.cancel()
	if err := sv.wait(t); err != nil {
		t.Errorf("Serve returned %v, want nil", err)
	}
	if err := <-startErr; err == nil {
		t.Error("InstanceStart interrupted by shutdown succeeded, want an error")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !errors.Is(m.ctxErr, context.Canceled) {
		t.Errorf("Machine.Start saw context error %v, want context.Canceled", m.ctxErr)
	}
}

// TestClientGoneDoesNotCancel checks that an operation runs to its end when
// the client stops waiting, as in Firecracker, and requests queue behind it.
func TestClientGoneDoesNotCancel(t *testing.T) {
	m := newFakeMachine(t)
	m.block, m.blocked = make(chan struct{}), make(chan struct{})
	sv := serve(t, m)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- sv.c.InstanceStart(ctx) }()
	<-m.blocked
	if err := <-errc; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("InstanceStart with a short deadline: error %v, want DeadlineExceeded", err)
	}
	infoc := make(chan fcapi.InstanceInfo, 1)
	go func() {
		info, err := fcapi.NewClient(sv.sock).InstanceInfo(context.Background())
		if err != nil {
			t.Error(err)
		}
		infoc <- info
	}()
	select {
	case info := <-infoc:
		t.Fatalf("GET / answered %+v while InstanceStart was in flight, want it to wait", info)
	case <-time.After(20 * time.Millisecond):
	}
	close(m.block)
	if info := <-infoc; info.State != fcapi.StateRunning {
		t.Errorf("state after the abandoned InstanceStart finished = %q, want Running", info.State)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctxErr != nil {
		t.Errorf("Machine.Start saw context error %v, want none", m.ctxErr)
	}
}

func TestStartFromConfig(t *testing.T) {
	cfg, err := fcapi.ParseConfigFile([]byte(`{
		"boot-source": {"kernel_image_path": "/vmlinux", "boot_args": "console=ttyS0"},
		"drives": [{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true}],
		"machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
		"vsock": {"guest_cid": 3, "uds_path": "/v.sock"}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t)
	if err := h.s.StartFromConfig(context.Background(), cfg); err != nil {
		t.Fatalf("StartFromConfig: %v", err)
	}
	want := []string{"SetMachineConfig", "SetBootSource", "SetDrive", "SetVsock", "Start"}
	if got := h.m.callLog(); !reflect.DeepEqual(got, want) {
		t.Errorf("Machine calls = %v, want %v", got, want)
	}
	if s := h.state(); s != fcapi.StateRunning {
		t.Errorf("state = %q, want Running", s)
	}
	h.fault("PUT", "/drives/rootfs", driveBody, "not supported after starting the microVM")
}

func TestStartFromConfigErrors(t *testing.T) {
	tests := []struct {
		name    string
		cfg     fcapi.VMConfig
		failing string
		want    string
	}{
		{"network interface", fcapi.VMConfig{BootSource: fcapi.BootSource{KernelImagePath: "/k"},
			NetworkInterfaces: []fcapi.NetworkInterface{{IfaceID: "eth0", HostDevName: "tap0"}}}, "",
			`config file: network interface "eth0": Network config error: thaw-vmm does not implement network interfaces`},
		{"invalid", fcapi.VMConfig{}, "", "config file: boot-source: kernel_image_path is empty"},
		{"machine refuses", fcapi.VMConfig{BootSource: fcapi.BootSource{KernelImagePath: "/k"}}, "SetBootSource",
			"config file: boot-source: Boot source error: no such kernel"},
		{"start fails", fcapi.VMConfig{BootSource: fcapi.BootSource{KernelImagePath: "/k"}}, "Start",
			"config file: Start microvm error: no such kernel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			if tt.failing != "" {
				h.m.fail[tt.failing] = errors.New("no such kernel")
			}
			err := h.s.StartFromConfig(context.Background(), &tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("StartFromConfig error = %v, want it to contain %q", err, tt.want)
			}
			if s := h.state(); s != fcapi.StateNotStarted {
				t.Errorf("state after a failed StartFromConfig = %q, want Not started", s)
			}
		})
	}
}
