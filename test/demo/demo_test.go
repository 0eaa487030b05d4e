package demo

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/nested"
	"github.com/thawvm/thaw/internal/testenv"
)

// sandbox is the part of `thaw --json inspect` the test checks.
type sandbox struct {
	ID     string `json:"id"`
	State  string `json:"state"`
	Create []struct {
		Name       string  `json:"name"`
		DurationMS float64 `json:"duration_ms"`
	} `json:"create"`
	CreateMS float64 `json:"create_ms"`
}

// TestMainJob builds the main job's payload with `scripts/demo --payload`
// (the same packaging scripts/demo runs, so the two cannot drift) and
// runs it where Linux guests run. It checks that every step of the sequence
// succeeded, that python3 in the sandbox printed 42, and that the sandbox's
// create was timed, phase by phase. It never skips once KVM and root are
// there: any failed step fails it.
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

	steps := readSteps(t, filepath.Join(r.Files, "steps"))
	wantSteps := []string{"data directory", "start thawd", "template build", "create", "exec", "inspect"}
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
	t.Logf("create: %.1f ms %+v", sb.CreateMS, sb.Create)
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
