package reconcile

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/daemon/store"
)

var now = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func rec(id string, state store.SandboxState, pid int) store.Sandbox {
	r := store.Sandbox{ID: id, Template: "py", Build: "b1", State: state, Dir: "/d/" + id, CreatedAt: now.Add(-time.Hour)}
	if pid != 0 {
		r.Shim = store.Shim{PID: pid, StartTime: uint64(pid) * 10, ControlSocket: "/run/thaw/" + id + ".sock"}
	}
	if state == store.Failed {
		r.Reason = "vmm exited 1"
	}
	return r
}

func live(id string, pid int) Live {
	return Live{ID: id, PID: pid, StartTime: uint64(pid) * 10, ControlSocket: "/run/thaw/" + id + ".sock"}
}

// render shows a plan as "kind sandbox [pid]" lines, the easiest form to
// compare in a table.
func render(acts []Action) string {
	var b strings.Builder
	for _, a := range acts {
		fmt.Fprintf(&b, "%s %s", a.Kind, a.Sandbox)
		if a.Shim != nil {
			fmt.Fprintf(&b, " pid=%d", a.Shim.PID)
		}
		b.WriteString("; ")
	}
	return b.String()
}

func TestDecide(t *testing.T) {
	young := rec("new", store.Creating, 0)
	young.CreatedAt = now.Add(-time.Second)
	expired := rec("old", store.Running, 10)
	expired.TTL, expired.ExpiresAt = time.Minute, now.Add(-time.Second)
	notYet := rec("later", store.Running, 11)
	notYet.TTL, notYet.ExpiresAt = time.Hour, now.Add(time.Minute)
	pausedExpired := rec("nap", store.Paused, 0)
	pausedExpired.TTL, pausedExpired.ExpiresAt = time.Minute, now
	tests := []struct {
		name     string
		in       Input
		want     string
		deferred string
	}{
		{"running with its shim reattaches",
			Input{Records: []store.Sandbox{rec("a", store.Running, 5)}, Live: []Live{live("a", 5)}},
			"reattach a pid=5; ", ""},
		{"pausing and resuming reattach too",
			Input{Records: []store.Sandbox{rec("a", store.Pausing, 5), rec("b", store.Resuming, 6)}, Live: []Live{live("a", 5), live("b", 6)}},
			"reattach a pid=5; reattach b pid=6; ", ""},
		{"running without a shim fails",
			Input{Records: []store.Sandbox{rec("a", store.Running, 5)}},
			"fail-record a; ", ""},
		{"a reused pid is not the shim",
			Input{Records: []store.Sandbox{rec("a", store.Running, 5)}, Live: []Live{{ID: "a", PID: 5, StartTime: 999}}},
			"fail-record a; stop-shim a pid=5; ", ""},
		{"a shim with no record is stopped",
			Input{Live: []Live{live("ghost", 7)}},
			"stop-shim ghost pid=7; ", ""},
		{"ephemeral build VMs are ignored",
			Input{Live: []Live{live("build-123", 8)}},
			"", ""},
		{"young creating record is left alone, with its unrecorded shim",
			Input{Records: []store.Sandbox{young}, Live: []Live{live("new", 9)}, CreatingGrace: time.Minute},
			"", ""},
		{"creating record after a restart fails and its shim stops",
			Input{Records: []store.Sandbox{young}, Live: []Live{live("new", 9)}, CreatingGrace: 0},
			"fail-record new; stop-shim new pid=9; ", ""},
		{"creating record with a recorded shim fails and carries it",
			Input{Records: []store.Sandbox{rec("c", store.Creating, 12)}, Live: []Live{live("c", 12)}, CreatingGrace: time.Minute},
			"fail-record c pid=12; ", ""},
		{"paused has no process: a shim claiming it is stopped",
			Input{Records: []store.Sandbox{rec("p", store.Paused, 0)}, Live: []Live{live("p", 13)}},
			"stop-shim p pid=13; ", ""},
		{"paused alone is fine",
			Input{Records: []store.Sandbox{rec("p", store.Paused, 0)}},
			"", ""},
		{"stopping finishes, with or without its shim",
			Input{Records: []store.Sandbox{rec("s", store.Stopping, 14), rec("t", store.Stopping, 15)}, Live: []Live{live("s", 14)}},
			"finish-stop s pid=14; finish-stop t; ", ""},
		{"failed with a live shim stops it; failed alone waits for delete",
			Input{Records: []store.Sandbox{rec("f", store.Failed, 16), rec("g", store.Failed, 0)}, Live: []Live{live("f", 16)}},
			"stop-shim f pid=16; ", ""},
		{"TTL",
			Input{Records: []store.Sandbox{expired, notYet, pausedExpired}, Live: []Live{live("old", 10), live("later", 11)}},
			"reattach later pid=11; expire nap; expire old pid=10; ", ""},
		{"cap defers destructive actions, never reattachment",
			Input{Records: []store.Sandbox{rec("a", store.Running, 1), rec("b", store.Running, 2), rec("c", store.Running, 3), rec("d", store.Running, 4)},
				Live: []Live{live("d", 4), live("x", 99)}, MaxDestructive: 2},
			"reattach d pid=4; fail-record a; fail-record b; ", "fail-record c; stop-shim x pid=99; "},
		{"no budget only reports (a negative cap counts as 0)",
			Input{Records: []store.Sandbox{rec("a", store.Running, 1)}, MaxDestructive: -1},
			"", "fail-record a; "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in
			in.Now = now
			if in.MaxDestructive == 0 {
				in.MaxDestructive = 100 // uncapped unless the case says otherwise
			}
			p := Decide(in)
			if got := render(p.Actions); got != tt.want {
				t.Errorf("actions:\ngot  %q\nwant %q", got, tt.want)
			}
			if got := render(p.Deferred); got != tt.deferred {
				t.Errorf("deferred:\ngot  %q\nwant %q", got, tt.deferred)
			}
		})
	}
}

// TestDiscoveryOutage: if discovery reports no live shims at all, one pass
// fails at most the cap, however many sandboxes run.
func TestDiscoveryOutage(t *testing.T) {
	var recs []store.Sandbox
	for i := range 500 {
		recs = append(recs, rec(fmt.Sprintf("sb%03d", i), store.Running, i+1))
	}
	p := Decide(Input{Records: recs, Now: now, MaxDestructive: 10})
	if len(p.Actions) != 10 || len(p.Deferred) != 490 {
		t.Errorf("got %d actions and %d deferred, want 10 and 490", len(p.Actions), len(p.Deferred))
	}
}

func TestReasons(t *testing.T) {
	p := Decide(Input{Records: []store.Sandbox{rec("a", store.Running, 5)}, Now: now, MaxDestructive: 1})
	if len(p.Actions) != 1 || !strings.Contains(p.Actions[0].Reason, "shim (pid 5) is gone") {
		t.Errorf("got %+v, want a reason naming the gone shim", p.Actions)
	}
}

func silent(id string, pid int, since time.Duration) Silent {
	return Silent{ID: id, PID: pid, StartTime: uint64(pid) * 10, ControlSocket: "/run/thaw/" + id + ".sock", Since: now.Add(-since)}
}

// TestSilent: a recorded shim that is alive but does not answer is left
// alone until it has been silent for the limit, then failed and stopped,
// within the cap.
func TestSilent(t *testing.T) {
	const limit = 5 * time.Minute
	tests := []struct {
		name                    string
		in                      Input
		want, deferred, waiting string
	}{
		{"silent below the limit waits",
			Input{Records: []store.Sandbox{rec("a", store.Running, 5)}, Silent: []Silent{silent("a", 5, time.Minute)}, SilentLimit: limit},
			"", "", "fail-record a pid=5; "},
		{"silent for the limit is wedged: failed, its shim stopped",
			Input{Records: []store.Sandbox{rec("a", store.Running, 5), rec("b", store.Pausing, 6)},
				Silent: []Silent{silent("a", 5, limit), silent("b", 6, time.Hour)}, SilentLimit: limit},
			"fail-record a pid=5; fail-record b pid=6; ", "", ""},
		{"no limit: silent shims are never failed",
			Input{Records: []store.Sandbox{rec("a", store.Running, 5)}, Silent: []Silent{silent("a", 5, 24*time.Hour)}},
			"", "", "fail-record a pid=5; "},
		{"wedged shims count against the cap",
			Input{Records: []store.Sandbox{rec("a", store.Running, 1), rec("b", store.Running, 2), rec("c", store.Running, 3)},
				Silent:      []Silent{silent("a", 1, limit), silent("b", 2, limit), silent("c", 3, limit)},
				SilentLimit: limit, MaxDestructive: 2},
			"fail-record a pid=1; fail-record b pid=2; ", "fail-record c pid=3; ", ""},
		{"a silent process that is not the recorded shim does not count",
			Input{Records: []store.Sandbox{rec("a", store.Running, 5)}, Silent: []Silent{{ID: "a", PID: 5, StartTime: 1, Since: now.Add(-time.Minute)}}, SilentLimit: limit},
			"fail-record a; ", "", ""},
		{"a shim that answers is reattached whatever the silence says",
			Input{Records: []store.Sandbox{rec("a", store.Running, 5)}, Live: []Live{live("a", 5)}, Silent: []Silent{silent("a", 5, time.Hour)}, SilentLimit: limit},
			"reattach a pid=5; ", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.in
			in.Now = now
			if in.MaxDestructive == 0 {
				in.MaxDestructive = 100
			}
			p := Decide(in)
			if got := render(p.Actions); got != tt.want {
				t.Errorf("actions:\ngot  %q\nwant %q", got, tt.want)
			}
			if got := render(p.Deferred); got != tt.deferred {
				t.Errorf("deferred:\ngot  %q\nwant %q", got, tt.deferred)
			}
			if got := render(p.Waiting); got != tt.waiting {
				t.Errorf("waiting:\ngot  %q\nwant %q", got, tt.waiting)
			}
		})
	}
	p := Decide(Input{Records: []store.Sandbox{rec("a", store.Running, 5)}, Silent: []Silent{silent("a", 5, 301*time.Second)},
		SilentLimit: limit, Now: now, MaxDestructive: 1})
	if len(p.Actions) != 1 || !strings.Contains(p.Actions[0].Reason, "alive but its control socket has not answered for 5m1s") ||
		!strings.Contains(p.Actions[0].Reason, "shim_unresponsive_limit, is 5m0s") {
		t.Errorf("got %+v, want a reason saying how long the shim was silent and the limit", p.Actions)
	}
}
