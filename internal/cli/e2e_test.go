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

	"github.com/thawvm/thaw/internal/daemon/disk/disktest"
	"github.com/thawvm/thaw/internal/daemon/sandbox"
	"github.com/thawvm/thaw/internal/daemon/sandbox/sandboxtest"
	"github.com/thawvm/thaw/internal/testenv"
	"github.com/thawvm/thaw/internal/thawapi"
)

func TestMain(m *testing.M) {
	code := m.Run()
	sandboxtest.Cleanup()
	os.Exit(code)
}

// thawIn runs the CLI against sock with stdin.
func thawIn(t *testing.T, sock string, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	env := Env{Stdout: &out, Stderr: &errOut, Stdin: strings.NewReader(stdin), Environ: nil,
		LookupEnv: func(k string) (string, bool) {
			if k == "THAW_SOCKET" {
				return sock, true
			}
			return "", false
		}}
	code = Run(context.Background(), args, env)
	return code, out.String(), errOut.String()
}

// TestSandboxVerbs runs thawd through "thaw daemon" (in process, with the
// real shim and thaw-vmm) and drives a probe sandbox's whole life with the
// CLI: template register, create, inspect, exec (exit code, stdin), cp both
// ways, pause, resume, rm, and the errors for an unknown template and a
// deleted sandbox. The agent behind exec and cp runs on the host
// (sandboxtest.ServeVsockAgent): thaw-vmm has no vsock device yet.
func TestSandboxVerbs(t *testing.T) {
	testenv.RequireKVM(t)
	testenv.RequireUFFD(t)
	testenv.RequireRoot(t)
	bins := sandboxtest.Binaries(t)
	snap := sandboxtest.ProbeSnapshot(t, t.TempDir())
	data := filepath.Join(disktest.Mount(t, "xfs", 400), "d")
	sock := filepath.Join(t.TempDir(), "thawd.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var logs bytes.Buffer
	go func() {
		done <- Run(ctx, []string{"daemon", "-config", "/dev/null", "-data-dir", data, "-socket", sock,
			"-shim", filepath.Join(bins, "thaw-shim")}, // the default VMM: builtin
			Env{Stdout: &logs, Stderr: &logs, LookupEnv: func(string) (string, bool) { return "", false }})
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("thaw daemon exited %d", code)
		}
	}()
	for deadline := time.Now().Add(20 * time.Second); ; {
		if code, _, _ := thawIn(t, sock, "", "version"); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("thaw daemon never answered")
		}
		time.Sleep(20 * time.Millisecond)
	}
	run := func(stdin string, wantCode int, args ...string) string {
		t.Helper()
		code, out, errOut := thawIn(t, sock, stdin, args...)
		if code != wantCode {
			t.Fatalf("thaw %q: exit %d, want %d; stdout %q, stderr %q", args, code, wantCode, out, errOut)
		}
		return out + errOut
	}
	run("", 0, "template", "register", "probe", "--vmstate", snap.VMState, "--memory", snap.Memory, "--rootfs", snap.Rootfs,
		"--vcpus", "2", "--memory-mib", "64", "--ready-serial", sandboxtest.ReadyMarker)
	var sb thawapi.Sandbox
	if err := json.Unmarshal([]byte(run("", 0, "--json", "create", "--id", "c1", "--ttl", "1h", "probe")), &sb); err != nil {
		t.Fatal(err)
	}
	if sb.ID != "c1" || sb.State != "running" || sb.ExpiresAt == nil || sb.CreateMS <= 0 {
		t.Errorf("create --json: got %+v, want c1 running with an expiry and a create time", sb)
	}
	out := run("", 0, "inspect", "c1")
	for _, w := range []string{"running", "load", "handshake", "ready", "expires", "prefetch", "ordered (", "faults"} {
		if !strings.Contains(out, w) {
			t.Errorf("inspect lacks %q:\n%s", w, out)
		}
	}
	// The registration's recording run made an access log, and the
	// sandbox's page server prefetches in its order.
	var tpl thawapi.Template
	if err := json.Unmarshal([]byte(run("", 0, "--json", "template", "inspect", "probe")), &tpl); err != nil {
		t.Fatal(err)
	}
	if len(tpl.Builds) != 1 || !tpl.Builds[0].Recorded || tpl.Builds[0].AccessLogPages <= 0 {
		t.Fatalf("template inspect --json: got %+v, want one recorded build with a non-empty access log", tpl.Builds)
	}
	if err := json.Unmarshal([]byte(run("", 0, "--json", "inspect", "c1")), &sb); err != nil {
		t.Fatal(err)
	}
	if sb.Pages == nil || sb.Pages.Prefetch != thawapi.PrefetchOrdered || int64(sb.Pages.OrderPages) != tpl.Builds[0].AccessLogPages {
		t.Errorf("inspect --json pages: got %+v, want ordered prefetch of the build's %d access-log pages", sb.Pages, tpl.Builds[0].AccessLogPages)
	}
	sandboxtest.ServeVsockAgent(t, filepath.Join(data, "sandboxes", "c1", sandbox.VsockName))
	if out := run("", 7, "exec", "c1", "--", "sh", "-c", "echo hi; exit 7"); out != "hi\n" {
		t.Errorf("exec output: got %q, want %q", out, "hi\n")
	}
	if out := run("piped in", 0, "exec", "-i", "c1", "cat"); out != "piped in" {
		t.Errorf("exec -i output: got %q, want %q", out, "piped in")
	}
	local := filepath.Join(t.TempDir(), "local")
	os.WriteFile(local, []byte("payload"), 0o640)
	guest := filepath.Join(t.TempDir(), "in-guest")
	run("", 0, "cp", local, "c1:"+guest)
	if out := run("", 0, "cp", "c1:"+guest, "-"); out != "payload" {
		t.Errorf("cp out: got %q, want %q", out, "payload")
	}
	back := filepath.Join(t.TempDir(), "back")
	run("", 0, "cp", "c1:"+guest, back)
	if b, _ := os.ReadFile(back); string(b) != "payload" {
		t.Errorf("cp to a local file: got %q, want %q", b, "payload")
	}
	run("", 0, "pause", "c1")
	run("", 0, "resume", "c1")
	if out := run("", 0, "ls"); !strings.Contains(out, "c1") || !strings.Contains(out, "running") {
		t.Errorf("ls after resume:\n%s", out)
	}
	run("", 0, "rm", "c1")
	if out := run("", 1, "inspect", "c1"); !strings.Contains(out, "not found") {
		t.Errorf("inspect after rm: %q, want not found", out)
	}
	if out := run("", 1, "create", "nope"); !strings.Contains(out, `template "nope" not found`) {
		t.Errorf("create from an unknown template: %q", out)
	}
	run("", 0, "create", "--id", "c2", "probe")
	if out := run("", 1, "template", "rm", "probe"); !strings.Contains(out, "c2") {
		t.Errorf("template rm of a template in use: %q, want it refused naming c2", out)
	}
	run("", 0, "template", "rm", "--force", "probe")
	if out := run("", 0, "ls"); strings.Contains(out, "c2") {
		t.Errorf("ls after a forced template rm still shows c2:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(data, "sandboxes", "c2")); !os.IsNotExist(err) {
		t.Errorf("c2's directory after a forced template rm: %v", err)
	}
	run("", 2, "exec", "c1")
	run("", 2, "cp", "a", "b")
}
