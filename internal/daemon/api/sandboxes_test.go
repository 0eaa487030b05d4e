package api

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/thawapi"
)

// TestRegisterTemplate registers a snapshot through PUT /v1/templates/{name}
// (the exchange checked against the OpenAPI document): the answer carries
// the new current build with its ready check; bad bodies are refused with
// the field named.
func TestRegisterTemplate(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	write := func(name string, size int) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, make([]byte, size), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	body, _ := json.Marshal(thawapi.RegisterTemplate{VMState: write("vmstate", 64), Memory: write("mem", 1<<20), Rootfs: write("rootfs", 4096),
		VCPUs: 1, MemoryMiB: 1, Ready: &thawapi.ReadyCheck{Kind: "serial", Marker: "ready"}})
	status, out := f.do(t, "PUT", "/v1/templates/probe", "application/json", body)
	if status != 201 {
		t.Fatalf("register: status %d: %s", status, out)
	}
	var tpl thawapi.Template
	if err := json.Unmarshal(out, &tpl); err != nil {
		t.Fatal(err)
	}
	if len(tpl.Builds) != 1 || tpl.Current != tpl.Builds[0].ID || tpl.Builds[0].Ready != (thawapi.ReadyCheck{Kind: "serial", Marker: "ready"}) ||
		tpl.Builds[0].Recorded {
		t.Errorf("registered template: got %+v, want one current build, serial ready check, not recorded (no manager)", tpl)
	}
	for _, tc := range []struct{ body, want string }{
		{`{"vmstate":"x","memory":"y","rootfs":"z","vcpus":1,"memory_mib":1}`, "want an absolute path"},
		{`{"vmstate":"/x","memory":"/y","rootfs":"/z","vcpus":"one","memory_mib":1}`, `vcpus`},
		{`{"vmstate":"/x","memory":"/y","rootfs":"/z","vcpus":1,"memory_mib":1,"extra":1}`, "unknown field"},
	} {
		status, out := f.do(t, "PUT", "/v1/templates/probe", "application/json", []byte(tc.body))
		if status != 400 || !strings.Contains(string(out), tc.want) {
			t.Errorf("register %s: got %d %s, want 400 saying %q", tc.body, status, out, tc.want)
		}
	}
}

// TestSandboxRoutesWithoutManager: a thawd without shim and VMM answers
// the lifecycle routes "unavailable", saying why, and still checks what it
// can.
func TestSandboxRoutesWithoutManager(t *testing.T) {
	f := newFixture(t)
	for _, r := range []struct{ method, path, body string }{
		{"POST", "/v1/sandboxes", `{"template":"py"}`},
		{"DELETE", "/v1/sandboxes/sb1", ""},
		{"POST", "/v1/sandboxes/sb1/pause", ""},
		{"POST", "/v1/sandboxes/sb1/resume", ""},
	} {
		ct := ""
		if r.body != "" {
			ct = "application/json"
		}
		status, out := f.do(t, r.method, r.path, ct, []byte(r.body))
		if status != 503 || !strings.Contains(string(out), "no sandbox manager") {
			t.Errorf("%s %s: got %d %s, want 503 naming the missing manager", r.method, r.path, status, out)
		}
	}
	if status, out := f.do(t, "DELETE", "/v1/templates/py?force=maybe", "", nil); status != 400 || !strings.Contains(string(out), "force") {
		t.Errorf("DELETE with force=maybe: got %d %s, want 400", status, out)
	}
	if status, out := f.do(t, "DELETE", "/v1/templates/py?force=true", "", nil); status != 503 {
		t.Errorf("forced DELETE of a template in use without a manager: got %d %s, want 503", status, out)
	}
}

// FuzzExecHead feeds arbitrary exec bodies to the request-line parser: it
// never panics, every refusal is an invalid argument, and an accepted
// request leaves exactly the bytes after the first newline as stdin.
func FuzzExecHead(f *testing.F) {
	f.Add([]byte("{\"argv\":[\"cat\"],\"stdin\":true}\nhello"))
	f.Add([]byte(`{"shell":"echo hi","timeout_ms":5}`))
	f.Add([]byte("{\"argv\":[\"\"]}\n"))
	f.Add([]byte("{\"argv\":[\"a\\u0000b\"]}\n"))
	f.Add([]byte("{}\n{}"))
	f.Add([]byte("\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(data), 16)
		req, _, err := parseExecHead(br)
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("error %v is not invalid argument", err)
			}
			return
		}
		if err := req.Validate(); err != nil {
			t.Fatalf("accepted a request that does not validate: %v", err)
		}
		rest, _ := io.ReadAll(br)
		want := []byte(nil)
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			want = data[i+1:]
		}
		if !bytes.Equal(rest, want) && !(len(rest) == 0 && len(want) == 0) {
			t.Fatalf("stdin after the request line: got %q, want %q", rest, want)
		}
	})
}
