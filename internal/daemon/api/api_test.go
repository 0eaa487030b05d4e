package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/daemon/config"
	"github.com/thawvm/thaw/internal/daemon/layout"
	"github.com/thawvm/thaw/internal/daemon/live"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/daemon/template"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/thawapi"
)

var t0 = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)

type fixture struct {
	srv      *Server
	layout   layout.Layout
	settings *live.Settings
	client   *http.Client
	sock     string
	// boot ends the fixture's fake build VM boot with its error.
	boot chan error
}

// newFixture serves a Server over a real unix socket, backed by a real store
// holding template "py" (ready build b1, building b2) and two sandboxes.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "thawd.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	t.Cleanup(func() {
		if err := st.Check(); err != nil {
			t.Errorf("store invariants: %v", err)
		}
	})
	b1 := store.Build{ID: "b1", State: store.BuildReady, Dir: "/d/templates/py/b1",
		Artifacts: store.Artifacts{Memory: "mem", VMState: "vmstate", Rootfs: "rootfs.ext4", AccessLog: "access.log"},
		VCPUs:     2, MemoryMiB: 256, DiskMiB: 1024, MemoryBytes: 256 << 20, AccessLogPages: 1234,
		Warmup:  [][]string{{"python3", "-c", "pass"}},
		Timings: []store.Phase{{Name: "boot", Duration: 1500 * time.Millisecond}}, CreatedAt: t0, FinishedAt: t0.Add(time.Minute)}
	b2 := store.Build{ID: "b2", State: store.Building, Dir: "/d/templates/py/b2", VCPUs: 2, MemoryMiB: 256, DiskMiB: 1024, CreatedAt: t0}
	if err := st.CreateTemplate(store.Template{Name: "py", Builds: []store.Build{b1, b2}, Current: "b1", CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"sb1", "sb2"} {
		sb := store.Sandbox{ID: id, Template: "py", Build: "b1", State: store.Creating, Dir: "/d/sandboxes/" + id, UFFD: true, CreatedAt: t0, UpdatedAt: t0,
			Create: []store.Phase{{Name: "slot", Duration: 50 * time.Microsecond}, {Name: "load", Duration: 4 * time.Millisecond}}}
		if id == "sb2" {
			sb.TTL, sb.ExpiresAt = time.Hour, t0.Add(time.Hour)
		}
		if err := st.CreateSandbox(sb); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.UpdateSandbox("sb1", func(sb *store.Sandbox) error {
		sb.State, sb.Shim = store.Running, store.Shim{PID: 4242, StartTime: 1, ControlSocket: "/run/thaw/sb1.sock"}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	settings, err := live.New(config.Default())
	if err != nil {
		t.Fatal(err)
	}
	lay, err := layout.New(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	if err := lay.Init(); err != nil {
		t.Fatal(err)
	}
	boot := make(chan error)
	bin := t.TempDir()
	for _, n := range []string{"vmlinux", "thaw-agent"} {
		if err := os.WriteFile(filepath.Join(bin, n), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Build VMs "boot" until the test sends their outcome on boot.
	b := &template.Builder{Store: st, Layout: lay, Kernel: filepath.Join(bin, "vmlinux"), Agent: filepath.Join(bin, "thaw-agent"),
		Boot: func(ctx context.Context, _ template.BootRequest, log io.Writer) ([]store.Phase, error) {
			io.WriteString(log, "booted\n")
			select {
			case err := <-boot:
				return []store.Phase{{Name: "boot", Duration: time.Millisecond}}, err
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}}
	bctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	srv, err := New(Options{Store: st, Layout: lay, Settings: settings, Version: "test", Builds: template.NewRuns(bctx, b, nil)})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "thawd.sock")
	l, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	// Every exchange in every test is checked against the OpenAPI document.
	hs := NewHTTPServer(loadSpec(t).Handler(srv, func(err error) { t.Errorf("OpenAPI: %v", err) }))
	go hs.Serve(l)
	t.Cleanup(func() { hs.Close() })
	return &fixture{srv: srv, layout: lay, settings: settings, sock: sock, client: unixClient(sock), boot: boot}
}

func unixClient(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
}

// do sends a request and returns the status and the raw body.
func (f *fixture) do(t *testing.T, method, path, contentType string, body []byte) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "http://thawd"+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Header.Get("Content-Type"); got != "application/json" {
		t.Errorf("%s %s: content type %q, want application/json", method, path, got)
	}
	return resp.StatusCode, data
}

func TestInspect(t *testing.T) {
	f := newFixture(t)
	status, body := f.do(t, "GET", "/v1/sandboxes/sb1", "", nil)
	if status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	var sb thawapi.Sandbox
	if err := json.Unmarshal(body, &sb); err != nil {
		t.Fatal(err)
	}
	if sb.State != "running" || sb.ShimPID != 4242 || len(sb.Create) != 2 || sb.Create[1].DurationMS != 4 || sb.CreateMS != 4.05 {
		t.Errorf("got %+v, want running, shim 4242, 2 phases, load 4 ms, total 4.05 ms", sb)
	}
	status, body = f.do(t, "GET", "/v1/templates/py", "", nil)
	var tp thawapi.Template
	if err := json.Unmarshal(body, &tp); status != 200 || err != nil {
		t.Fatalf("status %d, %v: %s", status, err, body)
	}
	if tp.Current != "b1" || len(tp.Builds) != 2 || !tp.Builds[0].Recorded || tp.Builds[1].Recorded || tp.Builds[1].FinishedAt != nil {
		t.Errorf("got %+v", tp)
	}
	if w := tp.Builds[0].Warmup; len(w) != 1 || strings.Join(w[0], " ") != "python3 -c pass" || tp.Builds[1].Warmup != nil {
		t.Errorf("builds' warm-up: got %q and %q, want b1's python3 -c pass and none", w, tp.Builds[1].Warmup)
	}
	status, body = f.do(t, "GET", "/v1/sandboxes", "", nil)
	var list []thawapi.Sandbox
	if err := json.Unmarshal(body, &list); status != 200 || err != nil || len(list) != 2 || list[0].ID != "sb1" || list[1].ExpiresAt == nil {
		t.Errorf("list: status %d, %v, %+v", status, err, list)
	}
}

func TestErrors(t *testing.T) {
	f := newFixture(t)
	big := append([]byte(`{"uffd":true,"pad":"`), bytes.Repeat([]byte("x"), maxBody)...)
	tests := []struct {
		name        string
		method      string
		path        string
		contentType string
		body        string
		status      int
		kind        string
		want        string
	}{
		{"unknown sandbox", "GET", "/v1/sandboxes/nope", "", "", 404, "not found", `sandbox "nope" not found`},
		{"no metrics configured", "GET", "/metrics", "", "", 404, "not found", "serves no metrics"},
		{"ephemeral id", "GET", "/v1/sandboxes/build-1", "", "", 400, "invalid argument", "reserved for ephemeral build VMs"},
		{"unknown template", "GET", "/v1/templates/go", "", "", 404, "not found", `template "go" not found`},
		{"wrong method", "PUT", "/v1/settings", "", "", 404, "not found", "allowed: GET, PATCH"},
		{"no route", "GET", "/v1/nothing", "", "", 404, "not found", "no API route GET /v1/nothing"},
		{"unknown field", "PATCH", "/v1/settings", "application/json", `{"uffd":true,"ufd":false}`, 400, "invalid argument", `unknown field "ufd"`},
		{"wrong type", "PATCH", "/v1/settings", "application/json", `{"uffd":"on"}`, 400, "invalid argument", `field "uffd": want bool`},
		{"zero slots", "PATCH", "/v1/settings", "", `{"max_concurrent_restores":0,"uffd":false}`, 400, "invalid argument", "must be at least 1"},
		{"sets nothing", "PATCH", "/v1/settings", "", `{}`, 400, "invalid argument", "sets nothing"},
		{"empty body", "PATCH", "/v1/settings", "", ``, 400, "invalid argument", "body is empty"},
		{"two values", "PATCH", "/v1/settings", "", `{"uffd":true} {}`, 400, "invalid argument", "more than one JSON value"},
		{"not json", "PATCH", "/v1/settings", "text/plain", `uffd=true`, 400, "invalid argument", `content type "text/plain"`},
		{"too big", "PATCH", "/v1/settings", "", string(big), 400, "invalid argument", "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := f.do(t, tt.method, tt.path, tt.contentType, []byte(tt.body))
			var eb thawapi.ErrorBody
			if err := json.Unmarshal(body, &eb); err != nil {
				t.Fatalf("error body %q: %v", body, err)
			}
			if status != tt.status || eb.Kind != tt.kind || !strings.Contains(eb.Error, tt.want) {
				t.Errorf("got %d %q %q, want %d %q and a message containing %q", status, eb.Kind, eb.Error, tt.status, tt.kind, tt.want)
			}
			// The client side rebuilds the same kind from the status.
			if got := errdefs.KindOf(errdefs.FromHTTP(status, eb.Error)); got == nil || got.Error() != tt.kind {
				t.Errorf("client-side kind = %v, want %q", got, tt.kind)
			}
		})
	}
	// Nothing a refused PATCH carried was applied.
	if s := f.srv.currentSettings(); !s.UFFD || s.RestoreSlots.Limit != config.Default().MaxConcurrentRestores {
		t.Errorf("settings after refused patches: %+v, want the defaults", s)
	}
}

func TestPatchSettings(t *testing.T) {
	f := newFixture(t)
	status, body := f.do(t, "PATCH", "/v1/settings", "application/json", []byte(`{"uffd":false,"max_concurrent_restores":5}`))
	if status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	var s thawapi.Settings
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatal(err)
	}
	if s.UFFD || s.RestoreSlots.Limit != 5 {
		t.Errorf("response %+v, want uffd off and limit 5", s)
	}
	if f.settings.UFFD() || f.settings.Slots().Stats().Limit != 5 {
		t.Errorf("live settings not changed: uffd %v, %+v", f.settings.UFFD(), f.settings.Slots().Stats())
	}
}

func TestRequireToken(t *testing.T) {
	f := newFixture(t)
	token := []byte("0123456789abcdef0123")
	if _, err := f.srv.RequireToken([]byte("short"), f.srv); !errdefs.IsInvalidArgument(err) {
		t.Errorf("short token: got %v, want invalid argument", err)
	}
	h, err := f.srv.RequireToken(token, f.srv)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := NewHTTPServer(h)
	go hs.Serve(l)
	defer hs.Close()
	for _, tt := range []struct {
		auth   string
		status int
	}{
		{"", 401}, {"Bearer wrong-token-wrong-token", 401}, {"Basic " + string(token), 401}, {"Bearer " + string(token), 200},
	} {
		req, _ := http.NewRequest("GET", "http://"+l.Addr().String()+"/v1/version", nil)
		if tt.auth != "" {
			req.Header.Set("Authorization", tt.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.status {
			t.Errorf("Authorization %q: status %d, want %d", tt.auth, resp.StatusCode, tt.status)
		}
		if tt.status == 401 && resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("401 without WWW-Authenticate")
		}
	}
}

func TestLoadToken(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	if tok, err := LoadToken(write("good", "  0123456789abcdef0123\n", 0o600)); err != nil || string(tok) != "0123456789abcdef0123" {
		t.Errorf("good token: %q, %v", tok, err)
	}
	for _, tt := range []struct{ path, want string }{
		{write("open", "0123456789abcdef0123", 0o644), "chmod 600"},
		{write("short", "abc", 0o600), "at least 16"},
		{filepath.Join(dir, "missing"), "reading token file"},
	} {
		if _, err := LoadToken(tt.path); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("LoadToken(%s): got %v, want invalid argument containing %q", filepath.Base(tt.path), err, tt.want)
		}
	}
}

func TestListenUnix(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "thawd.sock")
	l, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, %v; want 0660", fi.Mode().Perm(), err)
	}
	// A second thawd on the same socket is refused while the first serves.
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if _, err := ListenUnix(sock); !errdefs.IsUnavailable(err) {
		t.Errorf("second listener: got %v, want unavailable", err)
	}
	// A socket left by a thawd that died (closed without unlinking) is
	// replaced.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	l2, err := ListenUnix(sock)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	l2.Close()
	// A path that is not a socket is never removed.
	file := filepath.Join(dir, "not-a-socket")
	os.WriteFile(file, []byte("keep"), 0o600)
	if _, err := ListenUnix(file); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("regular file: got %v, want failed precondition", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Errorf("the regular file was changed")
	}
}

func FuzzDecodeSettingsPatch(f *testing.F) {
	f.Add([]byte(`{"uffd":true,"max_concurrent_restores":4}`))
	f.Add([]byte(`{"uffd":null}`))
	f.Add([]byte(`{"max_concurrent_restores":1e400}`))
	f.Add([]byte(`[{}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var p thawapi.SettingsPatch
		if err := decodeJSON(data, &p); err != nil && !errdefs.IsInvalidArgument(err) {
			t.Fatalf("error %v is not invalid argument", err)
		}
	})
}

func Example_errorBody() {
	body, _ := json.Marshal(thawapi.ErrorBody{Error: `sandbox "x" not found`, Kind: "not found"})
	fmt.Println(string(body))
	// Output: {"error":"sandbox \"x\" not found","kind":"not found"}
}

func TestDeleteTemplate(t *testing.T) {
	f := newFixture(t)
	// A second template with a published build on disk.
	stage, err := f.layout.StageBuild("go", "g1")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(stage, "mem"), []byte("m"), 0o600)
	if err := f.layout.PublishBuild(stage, "go", "g1"); err != nil {
		t.Fatal(err)
	}
	g1 := store.Build{ID: "g1", State: store.BuildReady, Dir: f.layout.BuildDir("go", "g1"), VCPUs: 1, MemoryMiB: 64, DiskMiB: 64,
		Artifacts: store.Artifacts{Memory: "mem", VMState: "vmstate", Rootfs: "rootfs"}, CreatedAt: t0}
	if err := f.srv.store.CreateTemplate(store.Template{Name: "go", Builds: []store.Build{g1}, Current: "g1", CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}

	status, body := f.do(t, "DELETE", "/v1/templates/py", "", nil)
	if status != 412 || !strings.Contains(string(body), "sb1") {
		t.Errorf("deleting a template in use: %d %s, want 412 naming the sandboxes", status, body)
	}
	if status, body := f.do(t, "DELETE", "/v1/templates/nope", "", nil); status != 404 {
		t.Errorf("deleting an unknown template: %d %s, want 404", status, body)
	}

	req, _ := http.NewRequest("DELETE", "http://thawd/v1/templates/go", nil)
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 204 {
		t.Fatalf("DELETE go: status %d, want 204", resp.StatusCode)
	}
	if _, err := f.srv.store.Template("go"); !errdefs.IsNotFound(err) {
		t.Errorf("record after delete: %v, want not found", err)
	}
	if _, err := os.Stat(f.layout.TemplateDir("go")); !os.IsNotExist(err) {
		t.Errorf("template directory after delete: %v, want it gone", err)
	}
}
