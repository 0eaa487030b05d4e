package api

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/thawvm/thaw/internal/fcapi"
)

// FuzzHandler sends arbitrary bodies to every route, from a server that has
// been driven to a state picked by the input. The server must answer 200,
// 204 or 400, a 400 must carry an Error with a fault_message, and the fake
// Machine's contract checks (run in cleanup) must hold.
func FuzzHandler(f *testing.F) {
	for i := range routes {
		for _, body := range []string{bootBody, mcBody, driveBody, vsockBody, netBody, startBody, pauseBody, createBody, loadBody, "", "{}", "null"} {
			f.Add(uint8(i), uint8(0), body)
		}
		f.Add(uint8(i), uint8(1), `{"state":"Resumed"}`)
		f.Add(uint8(i), uint8(2), createBody)
		f.Add(uint8(i), uint8(3), `{"drive_id":"rootfs","path_on_host":"/r","is_root_device":true,"rate_limiter":null}`)
	}
	f.Fuzz(func(t *testing.T, routeIndex, stateIndex uint8, body string) {
		rt := routes[int(routeIndex)%len(routes)]
		h := newHarnessQuiet(t)
		// Drive the server to one of: fresh, running, paused, restored.
		setups := [][][3]string{
			nil,
			{{"PUT", "/boot-source", bootBody}, {"PUT", "/actions", startBody}},
			{{"PUT", "/boot-source", bootBody}, {"PUT", "/actions", startBody}, {"PATCH", "/vm", pauseBody}},
			{{"PUT", "/snapshot/load", loadBody}},
		}
		for _, s := range setups[int(stateIndex)%len(setups)] {
			req := httptest.NewRequest(s[0], s[1], strings.NewReader(s[2]))
			w := httptest.NewRecorder()
			h.s.ServeHTTP(w, req)
			if w.Code != http.StatusNoContent {
				t.Fatalf("setup %s %s: %d %s", s[0], s[1], w.Code, w.Body)
			}
		}
		path := strings.ReplaceAll(strings.ReplaceAll(rt.Path, "{drive_id}", "rootfs"), "{iface_id}", "eth0")
		var r io.Reader
		if body != "" {
			r = strings.NewReader(body)
		}
		req := httptest.NewRequest(rt.Method, path, r)
		w := httptest.NewRecorder()
		h.s.ServeHTTP(w, req)
		switch w.Code {
		case http.StatusOK, http.StatusNoContent:
		case http.StatusBadRequest:
			var e fcapi.Error
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.FaultMessage == "" {
				t.Fatalf("%s %s %q: 400 with body %q, want an Error with a fault_message", rt.Method, path, body, w.Body)
			}
		default:
			t.Fatalf("%s %s %q: status %d, want 200, 204 or 400", rt.Method, path, body, w.Code)
		}
	})
}

// newHarnessQuiet is newHarness without the spec checks, which are too slow
// for fuzzing and are covered by the table tests.
func newHarnessQuiet(t *testing.T) *harness {
	m := newFakeMachine(t)
	h := &harness{t: t, s: NewServer(m, testInfo, testLogger(t)), m: m}
	t.Cleanup(func() { checkServer(t, h.s, m) })
	return h
}
