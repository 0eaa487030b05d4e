package shim

import (
	"strings"
	"testing"
	"time"
)

func TestParseStopRequest(t *testing.T) {
	const def = 5 * time.Second
	tests := []struct {
		body string
		want time.Duration
		err  string
	}{
		{"", def, ""},
		{" \n", def, ""},
		{`{}`, def, ""},
		{`{"grace_ms": 250}`, 250 * time.Millisecond, ""},
		{`{"grace_ms": -1}`, 0, "grace_ms -1"},
		{`{"grace_ms": 600001}`, 0, "grace_ms 600001"},
		{`{"grace": 1}`, 0, "unknown field"},
		{`{"grace_ms": 1}{}`, 0, "data after"},
		{`{"grace_ms": "1"}`, 0, "cannot unmarshal"},
		{strings.Repeat(" ", maxRequestBody+1), 0, "exceeds"},
	}
	for _, tt := range tests {
		got, err := parseStopRequest([]byte(tt.body), def)
		switch {
		case tt.err == "" && (err != nil || got != tt.want):
			t.Errorf("parseStopRequest(%.20q): got %v, %v; want %v", tt.body, got, err, tt.want)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("parseStopRequest(%.20q): got %v, %v; want an error containing %q", tt.body, got, err, tt.err)
		}
	}
}

func FuzzParseStopRequest(f *testing.F) {
	f.Add([]byte(`{"grace_ms": 250}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"grace_ms": 1e3}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := parseStopRequest(body, time.Second)
		if err == nil && (got <= 0 || got > maxGrace) {
			t.Fatalf("accepted %q with grace %v, outside (0, %v]", body, got, maxGrace)
		}
	})
}

func FuzzDecodeStatus(f *testing.F) {
	f.Add([]byte(`{"id":"sb","state":"vmm-exited","shim_pid":1,"exit":{"code":0,"signal":9,"signal_name":"SIGKILL"},"done":true,"handshake":{"state":"ok"},"updated":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"state":"failed","reason":"x","shim_pid":2,"vmm_pid":3,"handshake":{"state":"failed","reason":"y"},"settle":{"settled":true,"pages":3}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := decodeStatus(b, "fuzz")
		if err != nil {
			return
		}
		if err := st.Check(); err != nil {
			t.Fatalf("accepted %q breaking an invariant: %v", b, err)
		}
	})
}

func TestStatusCheck(t *testing.T) {
	exited := &ExitStatus{Signal: 9, SignalName: "SIGKILL"}
	ok := Verdict{State: VerdictOK}
	tests := []struct {
		name string
		st   Status
		want string // "" means valid
	}{
		{"running", Status{State: StateRunning, ShimPID: 1, VMMPID: 2, Handshake: ok}, ""},
		{"exited", Status{State: StateVMMExited, ShimPID: 1, VMMPID: 2, Exit: exited, Done: true, Handshake: ok}, ""},
		{"failed before a VMM", Status{State: StateFailed, Reason: "r", ShimPID: 1, Done: true, Handshake: Verdict{State: VerdictFailed, Reason: "r"}}, ""},
		{"unknown state", Status{State: "paused", ShimPID: 1, Handshake: ok}, "unknown state"},
		{"failed without reason", Status{State: StateFailed, ShimPID: 1, Handshake: ok}, "reason"},
		{"reason without failure", Status{State: StateRunning, Reason: "r", ShimPID: 1, Handshake: ok}, "reason"},
		{"running and done", Status{State: StateRunning, ShimPID: 1, Done: true, Handshake: ok}, "but done"},
		{"exited without exit", Status{State: StateVMMExited, ShimPID: 1, VMMPID: 2, Done: true, Handshake: ok}, "exit status"},
		{"done, verdict pending", Status{State: StateFailed, Reason: "r", ShimPID: 1, Done: true, Handshake: Verdict{State: VerdictPending}}, "pending"},
		{"collected early", Status{State: StateRunning, ShimPID: 1, Collected: true, Handshake: ok}, "collected"},
		{"failed verdict, no reason", Status{State: StateRunning, ShimPID: 1, Handshake: Verdict{State: VerdictFailed}}, "verdict"},
		{"no shim pid", Status{State: StateRunning, Handshake: ok}, "shim pid"},
	}
	for _, tt := range tests {
		err := tt.st.Check()
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: got %v, want valid", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: got %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}
