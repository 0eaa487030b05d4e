package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thawvm/thaw/internal/thawapi"
)

func TestBuildRoutes(t *testing.T) {
	f := newFixture(t)
	img := filepath.Join(t.TempDir(), "root.ext4")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	post := func(body string) (int, []byte) {
		return f.do(t, "POST", "/v1/templates", "application/json", []byte(body))
	}

	for _, tc := range []struct{ name, body, want string }{
		{"missing image", `{"name":"web","image":{"kind":"ext4","path":"/nonexistent/root.ext4"},"vcpus":1,"memory_mib":128}`, "no such file"},
		{"unknown kind", `{"name":"web","image":{"kind":"iso","path":"` + img + `"},"vcpus":1,"memory_mib":128}`, "source.kind"},
		{"unknown field", `{"name":"web","image":{"kind":"ext4","path":"` + img + `"},"vcpus":1,"memory_mib":128,"cpus":2}`, "cpus"},
		{"empty step", `{"name":"web","image":{"kind":"ext4","path":"` + img + `"},"steps":[{"run":""}],"vcpus":1,"memory_mib":128}`, "steps[0].run is empty"},
		{"empty warm-up", `{"name":"web","image":{"kind":"ext4","path":"` + img + `"},"warmup":[["true"],[]],"vcpus":1,"memory_mib":128}`, "warmup[1] is empty"},
		{"warm-up as a string", `{"name":"web","image":{"kind":"ext4","path":"` + img + `"},"warmup":["python3 -c pass"],"vcpus":1,"memory_mib":128}`, "warmup"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := post(tc.body)
			if status != http.StatusBadRequest || !strings.Contains(string(body), tc.want) {
				t.Errorf("got %d %s, want 400 saying %q", status, body, tc.want)
			}
		})
	}
	// This thawd records nothing (its builder has no recording run), so
	// warm-up commands, which only shape the access log, are refused.
	if status, body := post(`{"name":"web","image":{"kind":"ext4","path":"` + img + `"},"warmup":[["python3","-c","pass"]],"vcpus":1,"memory_mib":128}`); status != http.StatusPreconditionFailed || !strings.Contains(string(body), "uffd_prefetch is off") {
		t.Errorf("warm-up without recording: got %d %s, want 412 saying prefetch is off", status, body)
	}

	good := `{"name":"web","image":{"kind":"ext4","path":"` + img + `"},"steps":[{"run":"true"}],"start":"sleep 1d","vcpus":1,"memory_mib":128}`
	status, body := post(good)
	if status != http.StatusAccepted {
		t.Fatalf("got %d %s, want 202", status, body)
	}
	var run thawapi.BuildRun
	if err := json.Unmarshal(body, &run); err != nil {
		t.Fatal(err)
	}
	if run.Template != "web" || run.State != "building" || !strings.HasPrefix(run.ID, "build-") {
		t.Errorf("got %+v, want a building build- run of web", run)
	}
	if status, body := post(good); status != http.StatusConflict {
		t.Errorf("second build of web: got %d %s, want 409", status, body)
	}
	runPath := "/v1/templates/web/builds/" + run.ID
	if status, body := f.do(t, "GET", runPath, "", nil); status != 200 || !strings.Contains(string(body), `"state":"building"`) {
		t.Errorf("GET run: got %d %s, want building", status, body)
	}
	if status, _ := f.do(t, "GET", "/v1/templates/other/builds/"+run.ID, "", nil); status != 404 {
		t.Errorf("run under another template: got %d, want 404", status)
	}

	logs := make(chan string, 1)
	go func() {
		resp, err := f.client.Get("http://thawd" + runPath + "/log?follow=true")
		if err != nil {
			logs <- err.Error()
			return
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		logs <- resp.Header.Get("Content-Type") + "\n" + string(data)
	}()
	f.boot <- errors.New("agent never became healthy")
	got := <-logs
	for _, want := range []string{"text/plain", "booted", "build failed: build VM " + run.ID + ": agent never became healthy"} {
		if !strings.Contains(got, want) {
			t.Errorf("got followed log %q, want it to contain %q", got, want)
		}
	}
	if status, body := f.do(t, "GET", runPath, "", nil); status != 200 || !strings.Contains(string(body), `"state":"failed"`) || !strings.Contains(string(body), "never became healthy") {
		t.Errorf("GET run after failure: got %d %s, want failed with the reason", status, body)
	}
	if status, _ := f.do(t, "GET", "/v1/templates/web", "", nil); status != 404 {
		t.Errorf("template web after a failed build: got %d, want 404", status)
	}
	if status, _ := f.do(t, "GET", runPath+"/log?follow=maybe", "", nil); status != 400 {
		t.Errorf("follow=maybe: got %d, want 400", status)
	}
}
