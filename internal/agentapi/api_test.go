package agentapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestCheckPath(t *testing.T) {
	tests := []struct {
		path string
		want string // substring of the error, "" for none
	}{
		{"/", ""},
		{"/etc/passwd", ""},
		{"", "empty"},
		{"etc/passwd", "not absolute"},
		{"/etc/../root", "not clean"},
		{"/etc//passwd", "not clean"},
		{"/etc/", "not clean"},
		{"/a\x00b", "NUL"},
		{"/" + strings.Repeat("a", MaxPathLen), "at most"},
	}
	for _, tt := range tests {
		err := CheckPath(tt.path)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("CheckPath(%q): got %v, want nil", tt.path, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("CheckPath(%q): got %v, want an error containing %q", tt.path, err, tt.want)
		case err != nil && !errors.Is(err, ErrInvalid):
			t.Errorf("CheckPath(%q): got kind %s, want %s", tt.path, KindOf(err), KindInvalid)
		}
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		v    interface{ Validate() error }
		want string
	}{
		{"exec ok", &ExecRequest{Argv: []string{"true"}}, ""},
		{"exec shell ok", &ExecRequest{Shell: "true", Cwd: "/tmp", Env: []string{"A=1"}}, ""},
		{"exec nothing", &ExecRequest{}, "needs argv or shell"},
		{"exec both", &ExecRequest{Argv: []string{"x"}, Shell: "x"}, "not both"},
		{"exec empty argv0", &ExecRequest{Argv: []string{""}}, "argv[0] is empty"},
		{"exec negative timeout", &ExecRequest{Argv: []string{"x"}, TimeoutMS: -1}, "timeout_ms"},
		{"exec relative cwd", &ExecRequest{Argv: []string{"x"}, Cwd: "tmp"}, "cwd"},
		{"exec bad env", &ExecRequest{Argv: []string{"x"}, Env: []string{"NOEQUALS"}}, "KEY=VALUE"},
		{"exec NUL arg", &ExecRequest{Argv: []string{"x", "a\x00"}}, "NUL"},
		{"init ok", &InitRequest{Hostname: "box-1.local", Entropy: make([]byte, 32), Time: time.Now()}, ""},
		{"init bad hostname", &InitRequest{Hostname: "a b"}, "hostname"},
		{"init long hostname", &InitRequest{Hostname: strings.Repeat("a", 65)}, "at most 64"},
		{"init little entropy", &InitRequest{Entropy: make([]byte, 3)}, "entropy is 3 bytes"},
		{"init much entropy", &InitRequest{Entropy: make([]byte, MaxEntropy+1)}, "entropy is"},
		{"init bad env", &InitRequest{Env: []string{"=x"}}, "KEY=VALUE"},
		{"shutdown ok", &ShutdownRequest{Action: "reboot"}, ""},
		{"shutdown bad", &ShutdownRequest{Action: "explode"}, "poweroff, reboot or halt"},
	}
	for _, tt := range tests {
		err := tt.v.Validate()
		if tt.want == "" && err != nil {
			t.Errorf("%s: got %v, want nil", tt.name, err)
		}
		if tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%s: got %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}

func TestErrorKinds(t *testing.T) {
	for _, k := range []Kind{KindInvalid, KindNotFound, KindExists, KindPermission, KindPrecondition, KindUnavailable, KindInternal} {
		st := StatusForKind(k)
		if got := kindForStatus(st); got != k {
			t.Errorf("kindForStatus(StatusForKind(%s) = %d) = %s, want %s", k, st, got, k)
		}
	}
	if got := StatusForKind(KindNotFound); got != http.StatusNotFound {
		t.Errorf("not found maps to %d, want 404", got)
	}
	err := fmt.Errorf("wrapped: %w", Errorf(KindNotFound, "no such file"))
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("errors.Is(%v, ErrNotFound) = false, want true", err)
	}
	if errors.Is(err, ErrExists) {
		t.Errorf("errors.Is(%v, ErrExists) = true, want false", err)
	}
	if got := KindOf(err); got != KindNotFound {
		t.Errorf("KindOf = %s, want %s", got, KindNotFound)
	}
	if got := KindOf(errors.New("plain")); got != KindInternal {
		t.Errorf("KindOf(plain) = %s, want %s", got, KindInternal)
	}
}

// FuzzRequests decodes arbitrary bytes as each request body the agent
// accepts, the way its handlers do, and validates them: no input may panic,
// and an accepted path must pass CheckPath.
func FuzzRequests(f *testing.F) {
	f.Add([]byte(`{"argv":["ls","-l"],"cwd":"/tmp","env":["A=1"],"timeout_ms":5}`))
	f.Add([]byte(`{"hostname":"h","entropy":"AAAAAAAAAAAAAAAAAAAAAA==","time":"2030-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"shell":"echo \u0000"}`))
	f.Add([]byte(`{"action":"reboot"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var e ExecRequest
		if json.Unmarshal(body, &e) == nil && e.Validate() == nil && e.Cwd != "" {
			if err := CheckPath(e.Cwd); err != nil {
				t.Fatalf("accepted cwd %q: %v", e.Cwd, err)
			}
		}
		var i InitRequest
		if json.Unmarshal(body, &i) == nil && i.Validate() == nil && len(i.Entropy) > MaxEntropy {
			t.Fatalf("accepted %d bytes of entropy", len(i.Entropy))
		}
		var s ShutdownRequest
		if json.Unmarshal(body, &s) == nil {
			s.Validate()
		}
	})
}
