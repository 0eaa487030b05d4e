package sandbox

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/daemon/sandbox/sandboxtest"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/shim"
)

// TestWarmUp runs warm-up commands through a real agent behind a vsock
// socket (on the host, as TestAgentReady does): they run in order, each
// after the previous one ended, with their output in the build log. A
// command that fails stops the warm-up there with its exit status and the
// end of its output, and one whose program does not exist says so; both
// are the template's fault (failed precondition).
func TestWarmUp(t *testing.T) {
	dir := t.TempDir()
	h := &shim.Handle{Client: shim.NewClient(filepath.Join(dir, "no-shim.sock")), Dir: dir}
	sandboxtest.ServeVsockAgent(t, filepath.Join(dir, VsockName))
	trace := filepath.Join(t.TempDir(), "trace")
	step := func(name string) []string {
		// Each command appends its name, then sleeps a little, so a
		// second one started before the first ended would interleave.
		return []string{"/bin/sh", "-c", "echo start " + name + " >>" + trace + "; sleep 0.1; echo end " + name + " >>" + trace + "; echo said " + name}
	}

	var log bytes.Buffer
	if err := warmUp(t.Context(), h, [][]string{step("a"), step("b")}, &log); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	if want := "start a\nend a\nstart b\nend b\n"; string(got) != want {
		t.Errorf("commands ran as %q, want one after the other, in order: %q", got, want)
	}
	for _, w := range []string{"==> warm-up command 1/2 (/bin/sh -c 'echo start a", "said a\n", "==> warm-up command 2/2", "said b\n"} {
		if !strings.Contains(log.String(), w) {
			t.Errorf("build log %q does not say %q", log.String(), w)
		}
	}

	os.Remove(trace)
	log.Reset()
	fail := []string{"/bin/sh", "-c", "echo lots of output; echo it broke >&2; exit 3"}
	err = warmUp(t.Context(), h, [][]string{step("a"), fail, step("c")}, &log)
	if !errdefs.IsFailedPrecondition(err) {
		t.Errorf("failing command: got %v, want failed precondition", err)
	}
	for _, w := range []string{"warm-up command 2/3", "exit code 3", "it broke"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("failing command: got %v, want it to say %q", err, w)
		}
	}
	if got, _ := os.ReadFile(trace); strings.Contains(string(got), "start c") {
		t.Errorf("the command after the failing one ran: trace %q", got)
	}

	err = warmUp(t.Context(), h, [][]string{{"no-such-program-thaw", "x"}}, &log)
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "no-such-program-thaw") {
		t.Errorf("missing program: got %v, want failed precondition naming it", err)
	}
}

// TestWarmUpVMEnds: a VM that ends during a warm-up command fails the
// warm-up at once, saying so, instead of after the command's bound.
func TestWarmUpVMEnds(t *testing.T) {
	dir := t.TempDir()
	sandboxtest.ServeVsockAgent(t, filepath.Join(dir, VsockName))
	h := endingShim(t, dir, "build-x", 300*time.Millisecond)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	start := time.Now()
	err := warmUp(ctx, h, [][]string{{"sleep", "30"}}, nil)
	if err == nil || !strings.Contains(err.Error(), "the VM ended before warm-up command 1/1 (sleep 30) finished") {
		t.Errorf("got %v, want it to say the VM ended during the warm-up", err)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("the warm-up failed after %v: it waited for the command rather than the VM", d)
	}
}

func TestQuoteArgv(t *testing.T) {
	for _, tc := range []struct {
		argv []string
		want string
	}{
		{[]string{"python3", "-c", "pass"}, "python3 -c pass"},
		{[]string{"python3", "-c", "print(6*7)"}, "python3 -c 'print(6*7)'"},
		{[]string{"sh", "-c", "it's"}, `sh -c 'it'\''s'`},
		{[]string{"echo", ""}, "echo ''"},
		{[]string{"printf", "a\nb"}, `printf "a\nb"`},
	} {
		if got := quoteArgv(tc.argv); got != tc.want {
			t.Errorf("quoteArgv(%q): got %s, want %s", tc.argv, got, tc.want)
		}
	}
}
