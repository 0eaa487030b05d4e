package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/daemon/template"
	"github.com/thawvm/thaw/internal/thawapi"
)

// fakeBoot stands in for the build VM: it logs the steps it was given and
// writes a snapshot of the requested size, or fails with fail.
func fakeBoot(fail error) template.Booter {
	return func(_ context.Context, r template.BootRequest, log io.Writer) ([]store.Phase, error) {
		for _, s := range r.Steps {
			io.WriteString(log, "running: "+s.Shell+" in "+s.Workdir+" with "+strings.Join(s.Env, " ")+"\n")
		}
		if fail != nil {
			return nil, fail
		}
		if err := os.WriteFile(r.VMState, []byte("state"), 0o600); err != nil {
			return nil, err
		}
		return []store.Phase{{Name: "boot", Duration: 2 * time.Second}, {Name: "snapshot", Duration: 300 * time.Millisecond}},
			os.WriteFile(r.Memory, make([]byte, r.MemoryMiB<<20), 0o600)
	}
}

// fakeRecord stands in for the recording run: it logs the warm-up
// commands it was given, one argv per line, and writes a one-page log.
func fakeRecord(_ context.Context, r template.RecordSpec) (template.Recording, error) {
	for _, w := range r.Warmup {
		fmt.Fprintf(r.Progress, "warming up: %q\n", w)
	}
	return template.Recording{Pages: 1}, os.WriteFile(r.Log, []byte("log"), 0o600)
}

func ext4Image(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "root.ext4")
	if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestTemplateBuild(t *testing.T) {
	sock := serveBuilds(t, fakeBoot(nil))
	img := ext4Image(t)
	code, out, errOut := thaw(t, sock, "template", "build", "web", "--image", img, "--run", "apt-get install -y nginx",
		"--env", "A=1", "--workdir", "/srv", "--start", "nginx", "--memory-mib", "64",
		"--warmup", `python3 -c 'print("hi there")'`, "--warmup", "nginx -t")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"==> build build-", "copying " + img, "running: apt-get install -y nginx in /srv with A=1", "published", "64MiB",
		`warming up: ["python3" "-c" "print(\"hi there\")"]`, `warming up: ["nginx" "-t"]`,
		"\nwarm-up ", ` python3 -c 'print("hi there")'` + "\n", " nginx -t\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	code, out, errOut = thaw(t, sock, "--json", "template", "build", "web2", "--image", img, "--memory-mib", "64")
	var run thawapi.BuildRun
	if code != 0 || json.Unmarshal([]byte(out), &run) != nil || run.State != "ready" || run.Build == "" {
		t.Errorf("--json build: exit %d, %q (stderr %s), want a ready run as JSON", code, out, errOut)
	}
}

func TestTemplateBuildFailures(t *testing.T) {
	sock := serveBuilds(t, fakeBoot(errors.New("agent never became healthy")))
	img := ext4Image(t)
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"template", "build", "web", "--image", img}, 1, "failed: build VM build-"},
		{[]string{"template", "build", "web", "--image", "/nonexistent/x.tar"}, 1, "--image: stat /nonexistent/x.tar"},
		{[]string{"template", "build", "web", "--image", img, "--kind", "iso"}, 1, `source.kind "iso"`},
		{[]string{"template", "build", "web"}, 2, "--image is required"},
		{[]string{"template", "build", "--image", img}, 2, "takes a name first"},
		{[]string{"template", "build", "web", "--image", img, "--env", "A=1"}, 2, "there are none"},
		{[]string{"template", "build", "web", "--image", img, "extra"}, 2, "unexpected arguments"},
		{[]string{"template", "build", "web", "--image", img, "--warmup", "echo $HOME"}, 2, `--warmup "echo $HOME": '$' is shell syntax`},
		{[]string{"template", "build", "web", "--image", img, "--warmup", " "}, 2, "no command"},
	}
	for _, tt := range tests {
		code, _, errOut := thaw(t, sock, tt.args...)
		if code != tt.code || !strings.Contains(errOut, tt.want) {
			t.Errorf("thaw %q: exit %d, stderr %q; want exit %d and %q", tt.args, code, errOut, tt.code, tt.want)
		}
	}
	if code, _, errOut := thaw(t, serve(t), "template", "build", "web", "--image", img); code != 1 || !strings.Contains(errOut, "builds no templates") {
		t.Errorf("thawd without builds: exit %d, %q, want it to say it builds no templates", code, errOut)
	}
}
