package api

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"reflect"
	"runtime"
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
		if m.block == nil { // a blocked Machine call may still be running
			checkServer(t, sv.s, m)
		}
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

// checkNoLeak waits until the goroutine count is back to before (goroutines
// that are stopping need a moment) and fails the test if it is not.
func checkNoLeak(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines after Serve returned, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestServeWithClient(t *testing.T) {
	ctx := context.Background()
	before := runtime.NumGoroutine()
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
	c.Close()
	checkNoLeak(t, before)
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
	before := runtime.NumGoroutine()
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
	ctxErr := m.ctxErr
	m.mu.Unlock()
	if !errors.Is(ctxErr, context.Canceled) {
		t.Errorf("Machine.Start saw context error %v, want context.Canceled", ctxErr)
	}
	sv.c.Close()
	checkNoLeak(t, before)
}

// TestClientGoneDoesNotCancel checks that an operation runs to its end when
// the client stops waiting, as in Firecracker, and requests queue behind it.
func TestClientGoneDoesNotCancel(t *testing.T) {
	m := newFakeMachine(t)
	m.block, m.blocked = make(chan struct{}), make(chan struct{})
	sv := serve(t, m)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- sv.c.InstanceStart(ctx) }()
	<-m.blocked
	cancel() // the client gives up while the Machine works
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("InstanceStart cancelled by the client: error %v, want context.Canceled", err)
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

// TestClientMatchesSpec drives every client method against the server
// through a spec checker, so the bodies fcapi.Client sends (and would send
// to firecracker) are checked against api/firecracker.yaml.
func TestClientMatchesSpec(t *testing.T) {
	ctx := context.Background()
	start := func(t *testing.T) *fcapi.Client {
		sock := filepath.Join(t.TempDir(), "api.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		hs := &http.Server{Handler: loadSpec(t).Handler(NewServer(newFakeMachine(t), testInfo, testLogger(t)), func(err error) { t.Error(err) })}
		go hs.Serve(l)
		t.Cleanup(func() { hs.Close() })
		c := fcapi.NewClient(sock)
		t.Cleanup(c.Close)
		return c
	}
	must := func(t *testing.T, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Run("boot", func(t *testing.T) {
		c := start(t)
		must(t, c.WaitReady(ctx))
		_, err := c.Version(ctx)
		must(t, err)
		_, err = c.MachineConfig(ctx)
		must(t, err)
		must(t, c.PutMachineConfig(ctx, fcapi.MachineConfig{VcpuCount: 2, MemSizeMib: 256, SMT: true, TrackDirtyPages: true, HugePages: fcapi.HugePagesTransparent}))
		must(t, c.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: "/k", BootArgs: "console=ttyS0", InitrdPath: "/i"}))
		must(t, c.PutDrive(ctx, fcapi.Drive{DriveID: "rootfs", PathOnHost: "/r", IsRootDevice: true, IsReadOnly: true, PartUUID: "p", CacheType: fcapi.CacheWriteback}))
		must(t, c.PutVsock(ctx, fcapi.Vsock{GuestCID: 3, UDSPath: "/v", VsockID: "vsock0"}))
		if err := c.PutNetworkInterface(ctx, fcapi.NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "06:00:00:00:00:01"}); err == nil {
			t.Error("PutNetworkInterface succeeded, want thaw-vmm's 400")
		}
		must(t, c.InstanceStart(ctx))
		must(t, c.Pause(ctx))
		must(t, c.CreateSnapshot(ctx, fcapi.SnapshotCreateParams{SnapshotType: fcapi.SnapshotFull, SnapshotPath: "/s", MemFilePath: "/m"}))
		must(t, c.Resume(ctx))
		must(t, c.SendCtrlAltDel(ctx))
		if err := c.Action(ctx, fcapi.ActionFlushMetrics); err == nil {
			t.Error("FlushMetrics succeeded, want thaw-vmm's 400")
		}
		_, err = c.InstanceInfo(ctx)
		must(t, err)
	})
	t.Run("load", func(t *testing.T) {
		c := start(t)
		must(t, c.LoadSnapshot(ctx, fcapi.SnapshotLoadParams{SnapshotPath: "/s",
			MemBackend:      &fcapi.MemBackend{BackendType: fcapi.MemBackendUffd, BackendPath: "/u"},
			TrackDirtyPages: true, ResumeVM: true, VsockOverride: &fcapi.VsockOverride{UDSPath: "/v2"}}))
	})
	t.Run("deprecated load", func(t *testing.T) {
		c := start(t)
		must(t, c.LoadSnapshot(ctx, fcapi.SnapshotLoadParams{SnapshotPath: "/s", MemFilePath: "/m", EnableDiffSnapshots: true}))
	})
}
