package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/daemon/api"
	"github.com/thawvm/thaw/internal/daemon/config"
	"github.com/thawvm/thaw/internal/daemon/layout"
	"github.com/thawvm/thaw/internal/daemon/live"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/daemon/template"
	"github.com/thawvm/thaw/internal/thawapi"
)

var t0 = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)

// serve runs the real API server over a real store with template "py" and
// sandboxes "sb1" (running) and "sb2" (failed), and returns its socket.
func serve(t *testing.T) string {
	t.Helper()
	return serveBuilds(t, nil)
}

// serveBuilds is serve with template builds whose VM is boot (none if
// nil).
func serveBuilds(t *testing.T, boot template.Booter) string {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "thawd.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	b := store.Build{ID: "b1", State: store.BuildReady, Dir: "/d/b1", VCPUs: 2, MemoryMiB: 256, DiskMiB: 1024,
		Artifacts: store.Artifacts{Memory: "mem", VMState: "vmstate", Rootfs: "rootfs", AccessLog: "log"}, AccessLogPages: 1280, CreatedAt: t0,
		Timings: []store.Phase{{Name: "image", Duration: 3400 * time.Millisecond}, {Name: "boot", Duration: 12 * time.Second}, {Name: "record", Duration: 30 * time.Second}}}
	if err := st.CreateTemplate(store.Template{Name: "py", Builds: []store.Build{b}, Current: "b1", CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"sb1", "sb2"} {
		if err := st.CreateSandbox(store.Sandbox{ID: id, Template: "py", Build: "b1", State: store.Creating, Dir: "/d/" + id, UFFD: true, CreatedAt: t0,
			Create: []store.Phase{{Name: "slot", Duration: 100 * time.Microsecond}, {Name: "load", Duration: 7 * time.Millisecond}}}); err != nil {
			t.Fatal(err)
		}
	}
	st.UpdateSandbox("sb1", func(sb *store.Sandbox) error {
		sb.State, sb.Shim = store.Running, store.Shim{PID: 99, ControlSocket: "/s"}
		return nil
	})
	st.UpdateSandbox("sb2", func(sb *store.Sandbox) error {
		sb.State, sb.Reason = store.Failed, "agent never became healthy"
		return nil
	})
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
	opts := api.Options{Store: st, Layout: lay, Settings: settings, Version: "9.9"}
	if boot != nil {
		bin := t.TempDir()
		for _, n := range []string{"vmlinux", "thaw-agent"} {
			if err := os.WriteFile(filepath.Join(bin, n), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		b := &template.Builder{Store: st, Layout: lay, Kernel: filepath.Join(bin, "vmlinux"), Agent: filepath.Join(bin, "thaw-agent"), Boot: boot,
			Record: fakeRecord}
		opts.Builds = template.NewRuns(t.Context(), b, nil)
	}
	srv, err := api.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "thawd.sock")
	l, err := api.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := api.NewHTTPServer(srv)
	go hs.Serve(l)
	t.Cleanup(func() { hs.Close() })
	return sock
}

func thaw(t *testing.T, sock string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	env := Env{Stdout: &out, Stderr: &errOut, Now: func() time.Time { return t0.Add(90 * time.Minute) },
		LookupEnv: func(k string) (string, bool) {
			if k == "THAW_SOCKET" {
				return sock, true
			}
			return "", false
		}}
	code = Run(context.Background(), args, env)
	return code, out.String(), errOut.String()
}

func TestCommands(t *testing.T) {
	sock := serve(t)
	tests := []struct {
		args []string
		want []string // substrings of stdout
	}{
		{[]string{"version"}, []string{"thawd 9.9 (API v1)"}},
		{[]string{"ls"}, []string{"ID", "sb1", "running", "7.1ms", "1h", "sb2", "failed"}},
		{[]string{"inspect", "sb1"}, []string{"state", "running", "shim pid", "99", "memory", "uffd", "slot", "0.1ms", "load", "7.0ms"}},
		{[]string{"inspect", "sb2"}, []string{"reason", "agent never became healthy"}},
		{[]string{"template", "ls"}, []string{"NAME", "py", "b1"}},
		{[]string{"template", "inspect", "py"}, []string{"b1", "ready", "256MiB", "yes", "build b1    45.4s", "  image     3.4s", "  boot      12s",
			"  record    30s", "access log  1280 pages (5.0 MiB of 256 MiB)"}},
		{[]string{"settings"}, []string{"uffd", "on", "max-concurrent-restores  16"}},
		{[]string{"settings", "--uffd=off", "--max-concurrent-restores", "4"}, []string{"uffd                     off", "max-concurrent-restores  4"}},
	}
	for _, tt := range tests {
		code, out, errOut := thaw(t, sock, tt.args...)
		if code != 0 {
			t.Errorf("thaw %q: exit %d, stderr %s", tt.args, code, errOut)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(out, w) {
				t.Errorf("thaw %q: output lacks %q:\n%s", tt.args, w, out)
			}
		}
	}
}

func TestJSON(t *testing.T) {
	sock := serve(t)
	code, out, errOut := thaw(t, sock, "--json", "inspect", "sb1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var sb thawapi.Sandbox
	if err := json.Unmarshal([]byte(out), &sb); err != nil || sb.ID != "sb1" || len(sb.Create) != 2 {
		t.Errorf("--json inspect: %+v, %v\n%s", sb, err, out)
	}
	for _, args := range [][]string{{"--json", "ls"}, {"--json", "template", "ls"}, {"--json", "settings"}, {"--json", "version"}} {
		code, out, _ := thaw(t, sock, args...)
		if code != 0 || !json.Valid([]byte(out)) {
			t.Errorf("thaw %q: exit %d, output is not JSON:\n%s", args, code, out)
		}
	}
}

func TestFailures(t *testing.T) {
	sock := serve(t)
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"inspect", "nope"}, 1, `thaw: sandbox "nope" not found`},
		{[]string{"template", "inspect", "go"}, 1, `template "go" not found`},
		{[]string{"settings", "--max-concurrent-restores", "0"}, 1, "must be at least 1"},
		{[]string{"settings", "--uffd=maybe"}, 2, `invalid boolean "maybe"`},
		{[]string{}, 2, "no command given"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"inspect"}, 2, "inspect takes one sandbox id"},
		{[]string{"ls", "extra"}, 2, "ls takes no arguments"},
		{[]string{"template"}, 2, "template needs a subcommand"},
		{[]string{"template", "rm", "py"}, 1, `template "py" is used by sandboxes ["sb1" "sb2"]: delete them first`},
		{[]string{"template", "rm", "nope"}, 1, `template "nope" not found`},
		{[]string{"--addr", "127.0.0.1:1", "ls"}, 2, "--addr needs --token-file"},
		{[]string{"--socket", filepath.Join(t.TempDir(), "none.sock"), "ls"}, 1, "is it running?"},
		{[]string{"daemon", "-uffd=maybe"}, 1, `invalid boolean value "maybe" for -uffd`},
	}
	for _, tt := range tests {
		code, _, errOut := thaw(t, sock, tt.args...)
		if code != tt.code || !strings.Contains(errOut, tt.want) {
			t.Errorf("thaw %q: exit %d, stderr %q; want exit %d and %q", tt.args, code, errOut, tt.code, tt.want)
		}
	}
}

func TestHelp(t *testing.T) {
	code, out, _ := thaw(t, "/nonexistent", "-h")
	if code != 0 || !strings.Contains(out, "usage: thaw") {
		t.Errorf("thaw -h: exit %d, output %q", code, out)
	}
}

func TestTokenFile(t *testing.T) {
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte("x\n"), 0o600)
	code, _, errOut := thaw(t, "/nonexistent", "--token-file", tok, "ls")
	if code != 2 || !strings.Contains(errOut, "--token-file goes with --addr") {
		t.Errorf("token without addr: exit %d, %q", code, errOut)
	}
}
