package fcapi

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// request is what the test handler saw.
type request struct {
	method, path, body string
}

// serveUnix serves h on a unix socket under t.TempDir and returns its path.
func serveUnix(t *testing.T, h http.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(l) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return sock
}

// recorder answers every request with status and body and remembers it.
type recorder struct {
	mu     sync.Mutex
	seen   []request
	status int
	answer string
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	b, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	r.seen = append(r.seen, request{req.Method, req.URL.Path, string(b)})
	status, answer := r.status, r.answer
	r.mu.Unlock()
	if answer != "" {
		w.Header().Set("Content-Type", "application/json")
	}
	w.WriteHeader(status)
	io.WriteString(w, answer)
}

func (r *recorder) requests() []request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]request(nil), r.seen...)
}

func TestClientRequests(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		call func(c *Client) error
		want request
	}{
		{"boot source", func(c *Client) error { return c.PutBootSource(ctx, BootSource{KernelImagePath: "/k"}) },
			request{"PUT", "/boot-source", `{"kernel_image_path":"/k"}`}},
		{"machine config", func(c *Client) error { return c.PutMachineConfig(ctx, MachineConfig{VcpuCount: 2, MemSizeMib: 64}) },
			request{"PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":64,"smt":false,"track_dirty_pages":false}`}},
		{"drive", func(c *Client) error {
			return c.PutDrive(ctx, Drive{DriveID: "rootfs", PathOnHost: "/r", IsRootDevice: true})
		},
			request{"PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/r","is_root_device":true}`}},
		{"patch drive", func(c *Client) error { return c.PatchDrive(ctx, PartialDrive{DriveID: "rootfs", PathOnHost: "/s/r"}) },
			request{"PATCH", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/s/r"}`}},
		{"vsock", func(c *Client) error { return c.PutVsock(ctx, Vsock{GuestCID: 3, UDSPath: "/v"}) },
			request{"PUT", "/vsock", `{"guest_cid":3,"uds_path":"/v"}`}},
		{"net", func(c *Client) error {
			return c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: "tap0"})
		},
			request{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`}},
		{"start", func(c *Client) error { return c.InstanceStart(ctx) },
			request{"PUT", "/actions", `{"action_type":"InstanceStart"}`}},
		{"ctrl-alt-del", func(c *Client) error { return c.SendCtrlAltDel(ctx) },
			request{"PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`}},
		{"pause", func(c *Client) error { return c.Pause(ctx) },
			request{"PATCH", "/vm", `{"state":"Paused"}`}},
		{"resume", func(c *Client) error { return c.Resume(ctx) },
			request{"PATCH", "/vm", `{"state":"Resumed"}`}},
		{"create", func(c *Client) error {
			return c.CreateSnapshot(ctx, SnapshotCreateParams{SnapshotType: SnapshotFull, SnapshotPath: "/s", MemFilePath: "/m"})
		}, request{"PUT", "/snapshot/create", `{"snapshot_type":"Full","snapshot_path":"/s","mem_file_path":"/m"}`}},
		{"load", func(c *Client) error {
			return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s", MemBackend: &MemBackend{MemBackendUffd, "/u"}, ResumeVM: true})
		}, request{"PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_backend":{"backend_type":"Uffd","backend_path":"/u"},"resume_vm":true}`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{status: http.StatusNoContent}
			c := NewClient(serveUnix(t, rec))
			defer c.Close()
			if err := tt.call(c); err != nil {
				t.Fatalf("call: %v", err)
			}
			got := rec.requests()
			if len(got) != 1 || got[0] != tt.want {
				t.Errorf("server saw %+v, want [%+v]", got, tt.want)
			}
		})
	}
}

func TestClientGets(t *testing.T) {
	ctx := context.Background()
	// A newer firecracker may answer with fields we do not model: answers
	// are decoded leniently.
	rec := &recorder{status: http.StatusOK, answer: `{"vcpu_count":2,"mem_size_mib":512,"smt":false,"track_dirty_pages":true,"huge_pages":"None","cpu_template":"T2"}`}
	c := NewClient(serveUnix(t, rec))
	defer c.Close()
	m, err := c.MachineConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := (MachineConfig{VcpuCount: 2, MemSizeMib: 512, TrackDirtyPages: true, HugePages: HugePagesNone}); m != want {
		t.Errorf("MachineConfig() = %+v, want %+v", m, want)
	}
	rec.answer = `{"app_name":"Firecracker","id":"anonymous-instance","state":"Paused","vmm_version":"1.12.0"}`
	info, err := c.InstanceInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := (InstanceInfo{AppName: "Firecracker", ID: "anonymous-instance", State: StatePaused, VMMVersion: "1.12.0"}); info != want {
		t.Errorf("InstanceInfo() = %+v, want %+v", info, want)
	}
	rec.answer = `{"firecracker_version":"1.12.0"}`
	v, err := c.Version(ctx)
	if err != nil || v.FirecrackerVersion != "1.12.0" {
		t.Errorf("Version() = %+v, %v, want 1.12.0", v, err)
	}
	rec.answer = `not json`
	if _, err := c.InstanceInfo(ctx); err == nil || !strings.Contains(err.Error(), "decoding the answer") {
		t.Errorf("InstanceInfo on a non-JSON answer: error %v, want a decoding error", err)
	}
	for _, r := range rec.requests() {
		if r.method != "GET" || r.body != "" {
			t.Errorf("server saw %+v, want a GET without a body", r)
		}
	}
}

func TestClientErrors(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name       string
		status     int
		answer     string
		wantStatus int
		wantFault  string
	}{
		{"fault message", 400, `{"fault_message":"The requested operation is not supported after starting the microVM."}`, 400,
			"The requested operation is not supported after starting the microVM."},
		{"micro_http payload error", 400, `{ "error": "Request payload with size 60000 is larger than the limit" }`, 400,
			`{ "error": "Request payload with size 60000 is larger than the limit" }`},
		{"no body", 500, "", 500, "(no body)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{status: tt.status, answer: tt.answer}
			c := NewClient(serveUnix(t, rec))
			defer c.Close()
			err := c.PutVsock(ctx, Vsock{GuestCID: 3, UDSPath: "/v"})
			var ae *APIError
			if !errors.As(err, &ae) {
				t.Fatalf("error %v (%T), want an *APIError", err, err)
			}
			if ae.StatusCode != tt.wantStatus || ae.FaultMessage != tt.wantFault || ae.Method != "PUT" || ae.Path != "/vsock" {
				t.Errorf("APIError = %+v, want PUT /vsock %d %q", ae, tt.wantStatus, tt.wantFault)
			}
		})
	}
}

func TestClientValidatesBeforeSending(t *testing.T) {
	rec := &recorder{status: http.StatusNoContent}
	c := NewClient(serveUnix(t, rec))
	defer c.Close()
	err := c.PutMachineConfig(context.Background(), MachineConfig{VcpuCount: 0, MemSizeMib: 128})
	if err == nil || !strings.Contains(err.Error(), "invalid request: vcpu_count is 0") {
		t.Errorf("error %v, want an invalid-request error naming vcpu_count", err)
	}
	if n := len(rec.requests()); n != 0 {
		t.Errorf("server saw %d requests, want 0", n)
	}
}

func TestWaitReady(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	c := NewClient(sock)
	defer c.Close()

	// The socket does not exist yet: WaitReady keeps polling until it does.
	l, err := net.Listen("unix", sock+".tmp")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: &recorder{status: 200, answer: `{"app_name":"a","id":"i","state":"Not started","vmm_version":"v"}`}}
	done := make(chan error, 1)
	go func() {
		time.Sleep(30 * time.Millisecond)
		l.Close()
		l2, err := net.Listen("unix", sock)
		if err != nil {
			done <- err
			return
		}
		done <- nil
		srv.Serve(l2)
	}()
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestWaitReadyTimesOut(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "never.sock")
	c := NewClient(sock)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := c.WaitReady(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), sock) {
		t.Errorf("WaitReady error = %v, want DeadlineExceeded naming %s", err, sock)
	}
}
