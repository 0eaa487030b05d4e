package shim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"time"

	"github.com/thawvm/thaw/internal/conf"
)

// Info identifies a shim (GET /info).
type Info struct {
	ID         string   `json:"id"`
	ShimPID    int      `json:"shim_pid"`
	Dir        string   `json:"dir"`
	APISocket  string   `json:"api_socket"`
	UFFDSocket string   `json:"uffd_socket,omitempty"`
	Pages      PageMode `json:"pages"`
	// Procs is the shim process's GOMAXPROCS when asked (Config.Procs, or
	// what the automatic sizing chose so far).
	Procs int `json:"procs"`
}

// StopRequest is the body of POST /stop.
type StopRequest struct {
	// GraceMS is the time between SIGTERM and SIGKILL in milliseconds; 0
	// means the shim's configured grace.
	GraceMS int64 `json:"grace_ms,omitempty"`
}

// errorBody is the body of every 4xx and 5xx answer.
type errorBody struct {
	Error string `json:"error"`
}

// maxRequestBody bounds request bodies (only POST /stop has one).
const maxRequestBody = 4 << 10

// maxGrace bounds a stop's grace period.
const maxGrace = 10 * time.Minute

func (s *supervisor) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /info", s.handleInfo)
	mux.HandleFunc("GET /status", s.handleStatus)
	mux.HandleFunc("GET /ready", s.handleReady)
	mux.HandleFunc("GET /handshake", s.handleHandshake)
	mux.HandleFunc("GET /stats", s.handleStats)
	mux.HandleFunc("GET /settle", s.handleSettle)
	mux.HandleFunc("POST /stop", s.handleStop)
	mux.HandleFunc("GET /wait", s.handleWait)
	mux.HandleFunc("POST /collect", s.handleCollect)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no route %s %s: see the internal/shim package documentation for the control API", r.Method, r.URL.Path))
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}

func (s *supervisor) handleInfo(w http.ResponseWriter, r *http.Request) {
	info := Info{ID: s.cfg.ID, ShimPID: os.Getpid(), Dir: s.cfg.Dir, APISocket: s.cfg.APISocket(), Pages: s.cfg.Pages,
		Procs: runtime.GOMAXPROCS(0)}
	if s.cfg.Pages != PagesNone {
		info.UFFDSocket = s.cfg.UFFDSocket()
	}
	writeJSON(w, http.StatusOK, info)
}

func (s *supervisor) handleStatus(w http.ResponseWriter, r *http.Request) {
	st, _ := s.status()
	writeJSON(w, http.StatusOK, st)
}

// answerWhen answers with the status once cond holds, or 504 when the
// caller's request ends first (its context carries thawd's deadline).
func (s *supervisor) answerWhen(w http.ResponseWriter, r *http.Request, what string, cond func(*Status) bool) (Status, bool) {
	st, err := s.waitFor(r.Context(), cond)
	if err != nil {
		writeError(w, http.StatusGatewayTimeout, fmt.Sprintf("gave up waiting for %s: %v (state %s)", what, err, st.State))
		return st, false
	}
	return st, true
}

func (s *supervisor) handleReady(w http.ResponseWriter, r *http.Request) {
	if st, ok := s.answerWhen(w, r, "the VMM's API", func(st *Status) bool { return st.State != StateStarting || st.Done }); ok {
		writeJSON(w, http.StatusOK, st)
	}
}

func (s *supervisor) handleHandshake(w http.ResponseWriter, r *http.Request) {
	wait, err := waitParam(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	cond := func(st *Status) bool { return !wait || st.Handshake.State != VerdictPending }
	if st, ok := s.answerWhen(w, r, "the UFFD handshake", cond); ok {
		writeJSON(w, http.StatusOK, st.Handshake)
	}
}

func (s *supervisor) handleStats(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.stats())
}

func (s *supervisor) handleSettle(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Pages != PagesRecord {
		writeError(w, http.StatusConflict, fmt.Sprintf("no recording: this shim runs with pages %s", s.cfg.Pages))
		return
	}
	wait, err := waitParam(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	cond := func(st *Status) bool { return !wait || st.Settle.Settled || st.Done }
	if st, ok := s.answerWhen(w, r, "the recording to settle", cond); ok {
		writeJSON(w, http.StatusOK, st.Settle)
	}
}

// waitParam parses ?wait= (default true): blocking calls can be asked to
// answer at once.
func waitParam(r *http.Request) (bool, error) {
	v := r.URL.Query().Get("wait")
	if v == "" {
		return true, nil
	}
	b, err := conf.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("query parameter wait=%q: %w", v, err)
	}
	return b, nil
}

func (s *supervisor) handleStop(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBody+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("reading the body: %v", err))
		return
	}
	grace, err := parseStopRequest(body, s.cfg.StopGrace)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	s.stop(grace)
	if st, ok := s.answerWhen(w, r, "the VMM to exit", func(st *Status) bool { return st.Done }); ok {
		writeJSON(w, http.StatusOK, st)
	}
}

// parseStopRequest decodes a POST /stop body (empty, or a StopRequest)
// strictly and returns the grace period, def when it names none.
func parseStopRequest(body []byte, def time.Duration) (time.Duration, error) {
	if len(body) > maxRequestBody {
		return 0, fmt.Errorf("stop request body exceeds %d bytes", maxRequestBody)
	}
	var req StopRequest
	if len(bytes.TrimSpace(body)) > 0 {
		if err := decodeStrict(body, &req); err != nil {
			return 0, fmt.Errorf("stop request: %v (want {\"grace_ms\": N})", err)
		}
	}
	if req.GraceMS < 0 || req.GraceMS > maxGrace.Milliseconds() {
		return 0, fmt.Errorf("stop request: grace_ms %d: want 0 (the shim's default, %v) to %d", req.GraceMS, def, maxGrace.Milliseconds())
	}
	if req.GraceMS == 0 {
		return def, nil
	}
	return time.Duration(req.GraceMS) * time.Millisecond, nil
}

func (s *supervisor) handleWait(w http.ResponseWriter, r *http.Request) {
	if st, ok := s.answerWhen(w, r, "the VMM to exit", func(st *Status) bool { return st.Done }); ok {
		writeJSON(w, http.StatusOK, st)
	}
}

func (s *supervisor) handleCollect(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	if !s.st.Done {
		st := s.snapshotLocked()
		s.mu.Unlock()
		writeError(w, http.StatusConflict, fmt.Sprintf("the VM is still %s: stop it (or wait for it) before collecting", st.State))
		return
	}
	first := !s.st.Collected
	if first {
		s.updateLocked(func(st *Status) { st.Collected = true })
	}
	st := s.snapshotLocked()
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, st)
	if first {
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		close(s.collected)
	}
}

func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("data after the JSON object")
	}
	return nil
}

// graceMS converts a grace period for StopRequest.
func graceMS(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return max(1, d.Milliseconds())
}
