package demo

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/nested"
	"github.com/thawvm/thaw/internal/testenv"
)

// phase is a timed phase in thawd's answers.
type phase struct {
	Name       string  `json:"name"`
	DurationMS float64 `json:"duration_ms"`
}

// sandbox is the part of `thaw --json inspect` the test checks.
type sandbox struct {
	ID       string  `json:"id"`
	State    string  `json:"state"`
	Create   []phase `json:"create"`
	CreateMS float64 `json:"create_ms"`
	Pages    *struct {
		Prefetch   string `json:"prefetch"`
		OrderPages int64  `json:"order_pages"`
	} `json:"pages"`
}

// template is the part of `thaw --json template inspect` the test checks.
type template struct {
	Current string  `json:"current"`
	Builds  []build `json:"builds"`
}

// build is one of its builds.
type build struct {
	ID             string     `json:"id"`
	Recorded       bool       `json:"recorded"`
	AccessLogPages int64      `json:"access_log_pages"`
	Warmup         [][]string `json:"warmup"`
	Timings        []phase    `json:"timings"`
}

// TestMainJob builds the main job's payload with `scripts/demo --payload`
// (the same packaging scripts/demo runs, so the two cannot drift) and
// runs it where Linux guests run. It checks that every step of the sequence
// succeeded; that thawd built the template itself (`thaw template build`:
// image, boot, the build step through the agent, snapshot, recording run
// with python3 -c pass as its warm-up) and recorded a non-empty access log,
// larger than the same build's without the warm-up (the payload's "cold"
// file asks for that build too) by at least python3's start-up; that the
// sandbox restored from it
// prefetches in that log's order; that python3 in the sandbox printed 42
// and the build step's file is there; and that the sandbox's create was
// timed, phase by phase. It never skips once KVM and root are there: any
// failed step fails it.
func TestMainJob(t *testing.T) {
	testenv.RequireKVM(t)
	testenv.RequireRoot(t) // debootstrap, loop mounts
	root := repoRoot(t)

	payload := filepath.Join(t.TempDir(), "payload")
	cmd := exec.Command(filepath.Join(root, "scripts", "demo"), "--payload", payload)
	start := time.Now()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/demo --payload: %v\n%s", err, b)
	}
	t.Logf("payload built in %v", time.Since(start).Round(time.Millisecond))
	if err := os.WriteFile(filepath.Join(payload, "cold"), []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	r := nested.Test(t, nested.Payload{Dir: payload, Timeout: 15 * time.Minute})
	out := string(r.Output)
	t.Logf("main job (nested: %v, exit %d):\n%s", r.Nested, r.ExitCode, out)
	want := "running directly on this host"
	if r.Nested {
		want = "running in the nested harness's L1"
	}
	if !strings.Contains(out, want) {
		t.Errorf("output does not say %q", want)
	}
	// The CLI streamed the build's log (the step's command, each phase as
	// it ended) and printed the sandbox's prefetch mode.
	for _, w := range []string{"==> step 1/1: echo thaw-demo-build-step-ran", "==> boot: ", "==> snapshot: ",
		"==> warm-up command 1/1 (python3 -c pass)", "==> record-warmup: ", "==> record-settle: ",
		"==> access log: ", "prefetch     ordered ("} {
		if !strings.Contains(out, w) {
			t.Errorf("output does not say %q", w)
		}
	}

	steps := readSteps(t, filepath.Join(r.Files, "steps"))
	wantSteps := []string{"data directory", "start thawd", "template build", "template build without warm-up", "create", "exec", "build step", "inspect"}
	for i, name := range wantSteps {
		switch {
		case i >= len(steps):
			t.Errorf("step %q did not run (steps: %v)", name, steps)
		case steps[i].name != name:
			t.Errorf("step %d is %q, want %q", i, steps[i].name, name)
		case !steps[i].ok:
			t.Errorf("step %q failed", name)
		}
	}
	if r.ExitCode != 0 {
		t.Fatalf("the sequence exited %d, want 0", r.ExitCode)
	}

	if got, err := os.ReadFile(filepath.Join(r.Files, "exec.out")); err != nil {
		t.Error(err)
	} else if string(got) != "42\n" {
		t.Errorf("python3 -c 'print(6*7)' in the sandbox printed %q, want %q", got, "42\n")
	}

	if got, err := os.ReadFile(filepath.Join(r.Files, "step.out")); err != nil {
		t.Error(err)
	} else if string(got) != "thaw-demo-build-step-ran\n" {
		t.Errorf("the build step's file in the sandbox holds %q, want %q", got, "thaw-demo-build-step-ran\n")
	}

	b := readBuild(t, filepath.Join(r.Files, "template.json"), "record-warmup ")
	if got := fmt.Sprintf("%q", b.Warmup); got != `[["python3" "-c" "pass"]]` {
		t.Errorf("build %s: warm-up %s, want python3 -c pass", b.ID, got)
	}
	t.Logf("build: %d access-log pages, phases %+v", b.AccessLogPages, b.Timings)
	cold := readBuild(t, filepath.Join(r.Files, "template-cold.json"), "")
	if cold.Warmup != nil {
		t.Errorf("build without warm-up %s: warm-up %q, want none", cold.ID, cold.Warmup)
	}
	t.Logf("build without warm-up: %d access-log pages, phases %+v", cold.AccessLogPages, cold.Timings)
	// python3's start-up touches several MiB (interpreter, libraries,
	// the standard modules it imports); two recordings of the same
	// build without it differ by about a hundred pages.
	const minGrowth = 256
	if b.AccessLogPages < cold.AccessLogPages+minGrowth {
		t.Errorf("access log with the python3 warm-up: %d pages, without: %d; want at least %d more", b.AccessLogPages, cold.AccessLogPages, minGrowth)
	}

	js, err := os.ReadFile(filepath.Join(r.Files, "create.json"))
	if err != nil {
		t.Fatal(err)
	}
	var sb sandbox
	if err := json.Unmarshal(js, &sb); err != nil {
		t.Fatalf("create.json: %v\n%s", err, js)
	}
	if sb.ID != "demo" || sb.State != "running" {
		t.Errorf("sandbox %q in state %q, want demo running", sb.ID, sb.State)
	}
	if sb.CreateMS <= 0 || len(sb.Create) == 0 {
		t.Errorf("create timing: total %v ms, %d phases; want a positive total and its phases", sb.CreateMS, len(sb.Create))
	}
	if sb.Pages == nil || sb.Pages.Prefetch != "ordered" || sb.Pages.OrderPages != b.AccessLogPages {
		t.Errorf("sandbox page server: got %+v, want ordered prefetch of the build's %d access-log pages", sb.Pages, b.AccessLogPages)
	}
	t.Logf("create: %.1f ms %+v; pages %+v", sb.CreateMS, sb.Create, sb.Pages)
}

// readBuild reads `thaw --json template inspect`'s answer at path, checks
// that it holds one build, the current one, recorded with a non-empty
// access log and timed in the build's phases (warmup is "record-warmup "
// when the recording run ran warm-up commands), and returns it.
func readBuild(t *testing.T, path, warmup string) build {
	t.Helper()
	js, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var tpl template
	if err := json.Unmarshal(js, &tpl); err != nil {
		t.Fatalf("%s: %v\n%s", path, err, js)
	}
	if len(tpl.Builds) != 1 || tpl.Builds[0].ID != tpl.Current {
		t.Fatalf("%s: got builds %+v, current %q; want one, the current", path, tpl.Builds, tpl.Current)
	}
	b := tpl.Builds[0]
	if !b.Recorded || b.AccessLogPages <= 0 {
		t.Errorf("build %s: recorded %t with %d access-log pages, want a non-empty access log", b.ID, b.Recorded, b.AccessLogPages)
	}
	var names []string
	for _, p := range b.Timings {
		names = append(names, p.Name)
	}
	want := "image shim boot steps ready snapshot stop copy record-restore record-ready " + warmup + "record-settle record-stop"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("build %s phases: got %q, want %q", b.ID, got, want)
	}
	return b
}

type step struct {
	name string
	ok   bool
}

// readSteps reads guest/demo/run's steps file: "NAME... SECONDS ok" or
// "NAME... - failed" per line.
func readSteps(t *testing.T, path string) []step {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("the sequence wrote no steps file: %v", err)
	}
	defer f.Close()
	var steps []step
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			t.Fatalf("steps line %q: want NAME SECONDS RESULT", sc.Text())
		}
		n := len(fields)
		steps = append(steps, step{name: strings.Join(fields[:n-2], " "), ok: fields[n-1] == "ok"})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return steps
}

// repoRoot is the module's root directory (scripts/demo lives there).
func repoRoot(t *testing.T) string {
	t.Helper()
	b, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatalf("finding the module root: %v", err)
	}
	return strings.TrimSpace(string(b))
}
