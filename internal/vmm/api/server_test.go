package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/thawvm/thaw/internal/fcapi"
)

var testInfo = fcapi.InstanceInfo{AppName: "thaw-vmm", ID: "vm1", VMMVersion: "0.1.0-test"}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// harness drives a Server through its http.Handler and checks every
// exchange against api/firecracker.yaml.
type harness struct {
	t *testing.T
	s *Server
	m *fakeMachine
}

func newHarness(t *testing.T) *harness {
	m := newFakeMachine(t)
	h := &harness{t: t, s: NewServer(m, testInfo, testLogger(t)), m: m}
	t.Cleanup(func() { checkServer(t, h.s, m) })
	return h
}

// checkServer runs the server's invariant check and checks that the
// server's idea of the instance state matches the Machine's.
func checkServer(t testing.TB, s *Server, m *fakeMachine) {
	t.Helper()
	if err := s.check(); err != nil {
		t.Errorf("server invariant: %v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	if s.info.State != m.state {
		t.Errorf("server says %q, Machine is %q", s.info.State, m.state)
	}
}

// do sends one request and returns the status and body.
func (h *harness) do(method, path, body string) (int, string) {
	h.t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, r)
	w := httptest.NewRecorder()
	h.s.ServeHTTP(w, req)
	resp := w.Result()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusNoContent && resp.Header.Get("Content-Type") != "application/json" {
		h.t.Errorf("%s %s answered %d with Content-Type %q, want application/json", method, path, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	checkAgainstSpec(h.t, method, path, body, resp.StatusCode, string(b))
	return resp.StatusCode, string(b)
}

// ok sends a request that must succeed with status want.
func (h *harness) ok(method, path, body string, want int) string {
	h.t.Helper()
	status, resp := h.do(method, path, body)
	if status != want {
		h.t.Fatalf("%s %s %s: got %d %s, want %d", method, path, body, status, resp, want)
	}
	return resp
}

// fault sends a request that must fail with 400 and a fault_message
// containing want.
func (h *harness) fault(method, path, body, want string) {
	h.t.Helper()
	status, resp := h.do(method, path, body)
	var e fcapi.Error
	if err := json.Unmarshal([]byte(resp), &e); err != nil {
		h.t.Fatalf("%s %s: answer %q is not an Error: %v", method, path, resp, err)
	}
	if status != http.StatusBadRequest || !strings.Contains(e.FaultMessage, want) {
		h.t.Fatalf("%s %s %.80s: got %d %q, want 400 with a fault_message containing %q", method, path, body, status, e.FaultMessage, want)
	}
}

func (h *harness) state() fcapi.InstanceState {
	h.t.Helper()
	var info fcapi.InstanceInfo
	if err := json.Unmarshal([]byte(h.ok("GET", "/", "", 200)), &info); err != nil {
		h.t.Fatal(err)
	}
	return info.State
}

const (
	bootBody   = `{"kernel_image_path":"/vmlinux","boot_args":"console=ttyS0"}`
	mcBody     = `{"vcpu_count":2,"mem_size_mib":256}`
	driveBody  = `{"drive_id":"rootfs","path_on_host":"/rootfs.ext4","is_root_device":true,"is_read_only":false}`
	vsockBody  = `{"guest_cid":3,"uds_path":"/tmp/v.sock"}`
	netBody    = `{"iface_id":"eth0","host_dev_name":"tap0"}`
	startBody  = `{"action_type":"InstanceStart"}`
	cadBody    = `{"action_type":"SendCtrlAltDel"}`
	flushBody  = `{"action_type":"FlushMetrics"}`
	pauseBody  = `{"state":"Paused"}`
	resumeBody = `{"state":"Resumed"}`
	createBody = `{"snapshot_type":"Full","snapshot_path":"/s/vmstate","mem_file_path":"/s/mem"}`
	loadBody   = `{"snapshot_path":"/s/vmstate","mem_backend":{"backend_type":"Uffd","backend_path":"/s/uffd.sock"}}`
)

// TestBootLifecycle walks every route through a boot, pause, snapshot and
// resume, checking what reaches the Machine.
func TestBootLifecycle(t *testing.T) {
	h := newHarness(t)
	var info fcapi.InstanceInfo
	json.Unmarshal([]byte(h.ok("GET", "/", "", 200)), &info)
	if want := (fcapi.InstanceInfo{AppName: "thaw-vmm", ID: "vm1", State: fcapi.StateNotStarted, VMMVersion: "0.1.0-test"}); info != want {
		t.Errorf("GET / = %+v, want %+v", info, want)
	}
	if got, want := h.ok("GET", "/version", "", 200), `{"firecracker_version":"0.1.0-test"}`; got != want {
		t.Errorf("GET /version = %s, want %s", got, want)
	}
	if got, want := h.ok("GET", "/machine-config", "", 200), `{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}`; got != want {
		t.Errorf("GET /machine-config before PUT = %s, want %s", got, want)
	}
	h.ok("PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"cpu_template":"None","gdb_socket_path":null}`, 204)
	if got, want := h.ok("GET", "/machine-config", "", 200), `{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}`; got != want {
		t.Errorf("GET /machine-config after PUT = %s, want %s", got, want)
	}
	h.ok("PUT", "/boot-source", bootBody, 204)
	h.ok("PUT", "/drives/rootfs", driveBody, 204)
	h.ok("PUT", "/drives/scratch", `{"drive_id":"scratch","path_on_host":"/s.img","is_root_device":false,"is_read_only":true,"cache_type":"Writeback",
		"io_engine":"Sync","rate_limiter":null,"socket":null}`, 204)
	h.ok("PUT", "/vsock", vsockBody, 204)
	h.ok("PUT", "/actions", startBody, 204)
	if s := h.state(); s != fcapi.StateRunning {
		t.Errorf("state after InstanceStart = %q, want Running", s)
	}
	h.ok("PUT", "/actions", cadBody, 204)
	h.ok("PATCH", "/vm", pauseBody, 204)
	if s := h.state(); s != fcapi.StatePaused {
		t.Errorf("state after pause = %q, want Paused", s)
	}
	h.ok("PATCH", "/vm", pauseBody, 204) // already paused: accepted, not passed on
	h.ok("PUT", "/snapshot/create", createBody, 204)
	h.ok("PUT", "/snapshot/create", `{"snapshot_path":"/s2/vmstate","mem_file_path":"/s2/mem"}`, 204)
	h.ok("PATCH", "/vm", resumeBody, 204)
	h.ok("PATCH", "/vm", resumeBody, 204)
	if s := h.state(); s != fcapi.StateRunning {
		t.Errorf("state after resume = %q, want Running", s)
	}

	wantCalls := []string{"SetMachineConfig", "SetBootSource", "SetDrive", "SetDrive", "SetVsock", "Start",
		"SendCtrlAltDel", "Pause", "CreateSnapshot", "CreateSnapshot", "Resume"}
	if got := h.m.callLog(); !reflect.DeepEqual(got, wantCalls) {
		t.Errorf("Machine calls = %v, want %v", got, wantCalls)
	}
	if want := (fcapi.BootSource{KernelImagePath: "/vmlinux", BootArgs: "console=ttyS0"}); *h.m.boot != want {
		t.Errorf("boot source = %+v, want %+v", *h.m.boot, want)
	}
	if want := (fcapi.Drive{DriveID: "scratch", PathOnHost: "/s.img", IsReadOnly: true, CacheType: fcapi.CacheWriteback}); h.m.drives["scratch"] != want {
		t.Errorf("drive scratch = %+v, want %+v", h.m.drives["scratch"], want)
	}
	if want := (fcapi.Vsock{GuestCID: 3, UDSPath: "/tmp/v.sock"}); *h.m.vsock != want {
		t.Errorf("vsock = %+v, want %+v", *h.m.vsock, want)
	}
	wantCreated := []fcapi.SnapshotCreateParams{
		{SnapshotType: fcapi.SnapshotFull, SnapshotPath: "/s/vmstate", MemFilePath: "/s/mem"},
		{SnapshotPath: "/s2/vmstate", MemFilePath: "/s2/mem"},
	}
	if !reflect.DeepEqual(h.m.created, wantCreated) {
		t.Errorf("snapshots created = %+v, want %+v", h.m.created, wantCreated)
	}
}

func TestSnapshotLoad(t *testing.T) {
	tests := []struct {
		name      string
		body      string
		wantState fcapi.InstanceState
		want      fcapi.SnapshotLoadParams
		wantCalls []string
	}{
		{"uffd paused", loadBody, fcapi.StatePaused,
			fcapi.SnapshotLoadParams{SnapshotPath: "/s/vmstate", MemBackend: &fcapi.MemBackend{BackendType: fcapi.MemBackendUffd, BackendPath: "/s/uffd.sock"}},
			[]string{"LoadSnapshot"}},
		{"file resumed with vsock override", `{"snapshot_path":"/s/vmstate","mem_backend":{"backend_type":"File","backend_path":"/s/mem"},"resume_vm":true,"vsock_override":{"uds_path":"/new.sock"}}`,
			fcapi.StateRunning,
			fcapi.SnapshotLoadParams{SnapshotPath: "/s/vmstate", MemBackend: &fcapi.MemBackend{BackendType: fcapi.MemBackendFile, BackendPath: "/s/mem"},
				ResumeVM: true, VsockOverride: &fcapi.VsockOverride{UDSPath: "/new.sock"}},
			[]string{"LoadSnapshot", "Resume"}},
		{"deprecated fields normalized", `{"snapshot_path":"/s/vmstate","mem_file_path":"/s/mem","enable_diff_snapshots":true,"clock_realtime":false,"huge_pages":"Snapshot"}`, fcapi.StatePaused,
			fcapi.SnapshotLoadParams{SnapshotPath: "/s/vmstate", MemBackend: &fcapi.MemBackend{BackendType: fcapi.MemBackendFile, BackendPath: "/s/mem"}, TrackDirtyPages: true},
			[]string{"LoadSnapshot"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.ok("GET", "/", "", 200) // reading state does not count as configuring
			h.ok("GET", "/machine-config", "", 200)
			h.ok("PUT", "/snapshot/load", tt.body, 204)
			if s := h.state(); s != tt.wantState {
				t.Errorf("state after load = %q, want %q", s, tt.wantState)
			}
			if len(h.m.loaded) != 1 || !reflect.DeepEqual(h.m.loaded[0], tt.want) {
				t.Errorf("Machine loaded %+v, want [%+v]", h.m.loaded, tt.want)
			}
			if got := h.m.callLog(); !reflect.DeepEqual(got, tt.wantCalls) {
				t.Errorf("Machine calls = %v, want %v", got, tt.wantCalls)
			}
			// A restored VM is post-boot: configuration and a second load are refused.
			h.fault("PUT", "/boot-source", bootBody, "not supported after starting the microVM")
			h.fault("PUT", "/snapshot/load", tt.body, "not supported after starting the microVM")
			h.fault("PUT", "/actions", startBody, "not supported after starting the microVM")
		})
	}
}

// TestWrongState checks every call made in a state that does not allow it:
// it is answered 400 with Firecracker's message and never reaches the
// Machine.
func TestWrongState(t *testing.T) {
	type step struct{ method, path, body string }
	var (
		fresh   []step
		running = []step{{"PUT", "/boot-source", bootBody}, {"PUT", "/actions", startBody}}
		paused  = append(append([]step{}, running...), step{"PATCH", "/vm", pauseBody})
		loaded  = []step{{"PUT", "/snapshot/load", loadBody}}
	)
	const (
		postBoot = "The requested operation is not supported after starting the microVM."
		preBoot  = "The requested operation is not supported before starting the microVM."
	)
	tests := []struct {
		name  string
		setup []step
		req   step
		want  string
	}{
		{"boot source after start", running, step{"PUT", "/boot-source", bootBody}, postBoot},
		{"machine config after start", running, step{"PUT", "/machine-config", mcBody}, postBoot},
		{"drive after start", running, step{"PUT", "/drives/rootfs", driveBody}, postBoot},
		{"vsock after start", running, step{"PUT", "/vsock", vsockBody}, postBoot},
		{"net after start", running, step{"PUT", "/network-interfaces/eth0", netBody}, postBoot},
		{"start twice", running, step{"PUT", "/actions", startBody}, postBoot},
		{"start when paused", paused, step{"PUT", "/actions", startBody}, postBoot},
		{"load after start", running, step{"PUT", "/snapshot/load", loadBody}, postBoot},
		{"load after boot source", []step{{"PUT", "/boot-source", bootBody}}, step{"PUT", "/snapshot/load", loadBody},
			"Loading a microVM snapshot not allowed after configuring boot-specific resources."},
		{"load after machine config", []step{{"PUT", "/machine-config", mcBody}}, step{"PUT", "/snapshot/load", loadBody},
			"not allowed after configuring boot-specific resources"},
		{"load after refused network interface", []step{{"PUT", "/network-interfaces/eth0", netBody}}, step{"PUT", "/snapshot/load", loadBody},
			"not allowed after configuring boot-specific resources"},
		{"load after load", loaded, step{"PUT", "/snapshot/load", loadBody}, postBoot},
		{"drive after load", loaded, step{"PUT", "/drives/rootfs", driveBody}, postBoot},
		{"pause before start", fresh, step{"PATCH", "/vm", pauseBody}, preBoot},
		{"resume before start", fresh, step{"PATCH", "/vm", resumeBody}, preBoot},
		{"ctrl-alt-del before start", fresh, step{"PUT", "/actions", cadBody}, preBoot},
		{"flush metrics before start", fresh, step{"PUT", "/actions", flushBody}, preBoot},
		{"patch drive before start", fresh, step{"PATCH", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/d2"}`}, preBoot},
		{"snapshot before start", fresh, step{"PUT", "/snapshot/create", createBody}, preBoot},
		{"snapshot while running", running, step{"PUT", "/snapshot/create", createBody}, "the microVM is running; pause it first"},
		{"flush metrics when running", running, step{"PUT", "/actions", flushBody}, "no metrics sink"},
		{"network interface", fresh, step{"PUT", "/network-interfaces/eth0", netBody}, "does not implement network interfaces"},
		{"network override", fresh, step{"PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_file_path":"/m","network_overrides":[{"iface_id":"eth0","host_dev_name":"tap1"}]}`},
			"network_overrides: thaw-vmm does not implement network interfaces"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			for _, s := range tt.setup {
				if status, body := h.do(s.method, s.path, s.body); status != 204 && !strings.Contains(s.path, "network") {
					t.Fatalf("setup %s %s: %d %s", s.method, s.path, status, body)
				}
			}
			before := len(h.m.callLog())
			h.fault(tt.req.method, tt.req.path, tt.req.body, tt.want)
			if calls := h.m.callLog(); len(calls) != before {
				t.Errorf("the refused request reached the Machine: calls %v", calls[before:])
			}
		})
	}
}

// TestPatchDrive: PATCH /drives/{drive_id} after a load (and after a boot)
// reaches the Machine with the new path; a mismatched id, an empty path and
// a rate limiter are refused before it; the Machine's error comes back.
func TestPatchDrive(t *testing.T) {
	h := newHarness(t)
	for _, s := range [][3]string{{"PUT", "/boot-source", bootBody}, {"PUT", "/drives/rootfs", driveBody}, {"PUT", "/actions", startBody}, {"PATCH", "/vm", pauseBody}} {
		if status, body := h.do(s[0], s[1], s[2]); status != 204 {
			t.Fatalf("setup %s %s: %d %s", s[0], s[1], status, body)
		}
	}
	if status, body := h.do("PATCH", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/sandbox/disk"}`); status != 204 {
		t.Fatalf("PATCH /drives/rootfs: got %d %s, want 204", status, body)
	}
	h.m.mu.Lock()
	got := h.m.drives["rootfs"].PathOnHost
	h.m.mu.Unlock()
	if got != "/sandbox/disk" {
		t.Errorf("drive path after PATCH: got %q, want /sandbox/disk", got)
	}
	h.fault("PATCH", "/drives/other", `{"drive_id":"rootfs","path_on_host":"/x"}`, "does not match the id from the body")
	h.fault("PATCH", "/drives/rootfs", `{"drive_id":"rootfs"}`, "path_on_host is empty")
	h.fault("PATCH", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/x","rate_limiter":{"bandwidth":{"size":1,"refill_time":1}}}`, "rate_limiter")
	h.fault("PATCH", "/drives/nope", `{"drive_id":"nope","path_on_host":"/x"}`, "Unable to patch the block device: drive \"nope\": the machine has no such drive")
}

// TestBadRequests checks bodies, paths and methods Firecracker refuses.
func TestBadRequests(t *testing.T) {
	huge := `{"kernel_image_path":"` + strings.Repeat("a", MaxBodySize) + `"}`
	tests := []struct {
		name, method, path, body, want string
	}{
		{"bad JSON", "PUT", "/boot-source", `{"kernel_image_path":`, "An error occurred when deserializing the json body of a request: the JSON document is truncated"},
		{"not an object", "PUT", "/vsock", `[]`, "got JSON array, want an object"},
		{"unknown field", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"ht_enabled":true}`, "unknown field `ht_enabled`"},
		{"field of another case", "PUT", "/vsock", `{"guest_cid":3,"UDS_PATH":"/v"}`, "unknown field `UDS_PATH`"},
		{"duplicate field", "PATCH", "/vm", `{"state":"Paused","state":"Resumed"}`, "duplicate field `state`"},
		{"missing required", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/r"}`, "missing field `is_root_device`"},
		{"not implemented field", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/r","is_root_device":true,"io_engine":"Async"}`,
			"`io_engine` is part of Firecracker's API but not implemented by Thaw"},
		{"cpu template", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"T2"}`, "`cpu_template` is part of Firecracker's API"},
		{"clock_realtime", "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_file_path":"/m","clock_realtime":true}`, "`clock_realtime` is part of Firecracker's API"},
		{"invalid value", "PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":128}`, "vcpu_count is 0: want 1 to 32"},
		{"wrong type", "PUT", "/machine-config", `{"vcpu_count":"1","mem_size_mib":128}`, "field `vcpu_count`: got JSON string"},
		{"unknown action", "PUT", "/actions", `{"action_type":"Reboot"}`, `action_type is "Reboot"`},
		{"unknown vm state", "PATCH", "/vm", `{"state":"Running"}`, `state is "Running"`},
		{"load with both memory fields", "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_file_path":"/m","mem_backend":{"backend_type":"File","backend_path":"/m"}}`,
			"too many fields: either mem_backend or mem_file_path exclusively is required"},
		{"load with no memory field", "PUT", "/snapshot/load", `{"snapshot_path":"/s"}`, "missing field: either mem_backend or mem_file_path is required"},
		{"path and body ids differ", "PUT", "/drives/other", driveBody, "The id from the path [other] does not match the id from the body [rootfs]!"},
		{"bad path id", "PUT", "/drives/root-fs", `{"drive_id":"root-fs","path_on_host":"/r","is_root_device":true}`, "drive_id: the ID \"root-fs\" has '-'"},
		{"bad net path id", "PUT", "/network-interfaces/eth.0", `{"iface_id":"eth.0","host_dev_name":"tap0"}`, "iface_id"},
		{"empty PUT", "PUT", "/boot-source", "", "Empty PUT request."},
		{"empty PATCH", "PATCH", "/vm", "", "Empty PATCH request."},
		{"GET with body", "GET", "/machine-config", `{}`, "GET request cannot have a body."},
		{"huge body", "PUT", "/boot-source", huge, "is larger than the limit of 51200 allowed by server"},
		{"unknown path", "GET", "/balloon", "", "Invalid request method and/or path: GET /balloon."},
		{"unknown method", "DELETE", "/drives/rootfs", "", "Invalid request method and/or path: DELETE /drives/rootfs."},
		{"PATCH machine config", "PATCH", "/machine-config", mcBody, "Invalid request method and/or path: PATCH /machine-config."},
		{"unknown snapshot op", "PUT", "/snapshot/restore", loadBody, "Invalid request method and/or path: PUT /snapshot/restore."},
		{"drive without id", "PUT", "/drives/", driveBody, "The ID cannot be empty: want /drives/{id}."},
		{"interface without id", "PUT", "/network-interfaces", netBody, "The ID cannot be empty: want /network-interfaces/{id}."},
		{"snapshot without op", "PUT", "/snapshot", loadBody, "Missing snapshot operation type"},
		{"nested drive path", "PUT", "/drives/a/b", driveBody, "Invalid request method and/or path: PUT /drives/a/b."},
		{"trailing slash", "GET", "/machine-config/", "", "Invalid request method and/or path"},
		{"double slash", "PUT", "//drives/rootfs", driveBody, "Invalid request method and/or path: PUT //drives/rootfs."},
		{"dot dot", "PUT", "/drives/../vsock", vsockBody, "Invalid request method and/or path: PUT /drives/../vsock."},
		{"dot", "GET", "/./machine-config", "", "Invalid request method and/or path"},
		{"escaped slash in id", "PUT", "/drives/a%2Fb", `{"drive_id":"a/b","path_on_host":"/r","is_root_device":true}`, `the ID "a/b" has '/'`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.fault(tt.method, tt.path, tt.body, tt.want)
			if calls := h.m.callLog(); len(calls) != 0 {
				t.Errorf("a refused request reached the Machine: calls %v", calls)
			}
		})
	}
}

// TestOneRootDrive checks Firecracker's rule of at most one root drive,
// which a drive can hand over by being replaced.
func TestOneRootDrive(t *testing.T) {
	h := newHarness(t)
	root := func(id string, isRoot bool) string {
		return fmt.Sprintf(`{"drive_id":%q,"path_on_host":"/%s","is_root_device":%t}`, id, id, isRoot)
	}
	h.ok("PUT", "/drives/a", root("a", true), 204)
	h.ok("PUT", "/drives/a", root("a", true), 204) // replacing the root drive keeps it root
	h.fault("PUT", "/drives/b", root("b", true), `A root block device already exists: drive "a"`)
	h.ok("PUT", "/drives/b", root("b", false), 204)
	h.ok("PUT", "/drives/a", root("a", false), 204) // a hands the role over
	h.ok("PUT", "/drives/b", root("b", true), 204)
	h.fault("PUT", "/drives/a", root("a", true), `A root block device already exists: drive "b"`)
	if !h.m.drives["b"].IsRootDevice || h.m.drives["a"].IsRootDevice {
		t.Errorf("Machine drives = %+v, want b root and a not", h.m.drives)
	}
}

// TestHugeChunkedBody checks the body cap when no Content-Length is sent.
func TestHugeChunkedBody(t *testing.T) {
	h := newHarness(t)
	body := `{"kernel_image_path":"` + strings.Repeat("a", 2*MaxBodySize) + `"}`
	req := httptest.NewRequest("PUT", "/boot-source", io.MultiReader(strings.NewReader(body)))
	req.ContentLength = -1
	w := httptest.NewRecorder()
	h.s.ServeHTTP(w, req)
	if w.Code != 400 || !strings.Contains(w.Body.String(), "larger than the limit of 51200") {
		t.Errorf("chunked huge body: got %d %s, want 400 naming the limit", w.Code, w.Body)
	}
}

// TestMachineErrors checks that a Machine error is answered 400 with the
// route's category and the Machine's words, and leaves the state alone.
func TestMachineErrors(t *testing.T) {
	boom := errors.New("boom: the machine says no")
	tests := []struct {
		name, method, path, body string
		setup                    [][3]string
		failing, want            string
		wantState                fcapi.InstanceState
	}{
		{"boot source", "PUT", "/boot-source", bootBody, nil, "SetBootSource", "Boot source error: boom", fcapi.StateNotStarted},
		{"machine config", "PUT", "/machine-config", mcBody, nil, "SetMachineConfig", "Machine config error: boom", fcapi.StateNotStarted},
		{"drive", "PUT", "/drives/rootfs", driveBody, nil, "SetDrive", "Drive config error: boom", fcapi.StateNotStarted},
		{"vsock", "PUT", "/vsock", vsockBody, nil, "SetVsock", "Vsock config error: boom", fcapi.StateNotStarted},
		{"start", "PUT", "/actions", startBody, nil, "Start", "Start microvm error: boom", fcapi.StateNotStarted},
		{"pause", "PATCH", "/vm", pauseBody, [][3]string{{"PUT", "/actions", startBody}}, "Pause", "Internal VMM error: pausing the microVM: boom", fcapi.StateRunning},
		{"ctrl-alt-del", "PUT", "/actions", cadBody, [][3]string{{"PUT", "/actions", startBody}}, "SendCtrlAltDel", "Internal VMM error: sending Ctrl+Alt+Del: boom", fcapi.StateRunning},
		{"snapshot", "PUT", "/snapshot/create", createBody, [][3]string{{"PUT", "/actions", startBody}, {"PATCH", "/vm", pauseBody}},
			"CreateSnapshot", "Create snapshot error: boom", fcapi.StatePaused},
		{"resume", "PATCH", "/vm", resumeBody, [][3]string{{"PUT", "/actions", startBody}, {"PATCH", "/vm", pauseBody}},
			"Resume", "Internal VMM error: resuming the microVM: boom", fcapi.StatePaused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			for _, s := range tt.setup {
				h.ok(s[0], s[1], s[2], 204)
			}
			h.m.fail[tt.failing] = boom
			h.fault(tt.method, tt.path, tt.body, tt.want)
			if s := h.state(); s != tt.wantState {
				t.Errorf("state after the failure = %q, want %q", s, tt.wantState)
			}
		})
	}
}

// TestFailedLoadRefusesEverything checks that after a failed load every
// request is refused (Serve also returns, see TestServeFailedLoad).
func TestFailedLoadRefusesEverything(t *testing.T) {
	for _, failing := range []string{"LoadSnapshot", "Resume"} {
		t.Run(failing, func(t *testing.T) {
			h := newHarness(t)
			h.m.fail[failing] = errors.New("memory file is truncated")
			h.fault("PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_file_path":"/m","resume_vm":true}`, "Load snapshot error: ")
			h.fault("GET", "/", "", "The snapshot load failed and this VMM is exiting")
			h.fault("PUT", "/boot-source", bootBody, "memory file is truncated")
		})
	}
}

func TestNewServerDefaults(t *testing.T) {
	s := NewServer(newFakeMachine(t), fcapi.InstanceInfo{VMMVersion: "v", State: fcapi.StateRunning}, nil)
	req := httptest.NewRequest("GET", "/nowhere", nil)
	w := httptest.NewRecorder()
	s.ServeHTTP(w, req) // logs the refusal: must not need a logger
	if w.Code != 400 {
		t.Errorf("GET /nowhere: %d, want 400", w.Code)
	}
	want := fcapi.InstanceInfo{AppName: "thaw-vmm", ID: "anonymous-instance", State: fcapi.StateNotStarted, VMMVersion: "v"}
	if s.info != want {
		t.Errorf("NewServer info = %+v, want %+v", s.info, want)
	}
}
