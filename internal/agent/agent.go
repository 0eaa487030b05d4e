// Package agent is thaw-agent's server: it runs inside the guest, usually as
// PID 1, and answers the protocol defined in internal/agentapi over any
// net.Listener (vsock in the guest, a unix socket in tests).
//
// It starts processes in their own process groups so that a kill reaches
// their children, streams their output as it is produced, kills them when the
// client disconnects (unless asked to detach), serves files, and applies the
// post-restore initialisation (env, hostname, clock, entropy) that gives each
// sandbox restored from one snapshot its own identity.
package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/thawvm/thaw/internal/agentapi"
)

// Config configures a Server. The zero value plus a Logger is valid for
// tests on a host; cmd/thaw-agent fills in the PID 1 parts.
type Config struct {
	// Version is reported by /health.
	Version string
	// Logger receives the agent's logs; nil discards them.
	Logger *slog.Logger
	// System sets hostname, clock and entropy; nil means the real kernel
	// (HostSystem).
	System System
	// EtcDir holds passwd and group for user lookups; default "/etc".
	EtcDir string
	// ReapAll makes the server reap every child that exits, not only the
	// ones it started: the job of PID 1 or a child subreaper. A process
	// that reaps all its children must not use os/exec elsewhere.
	ReapAll bool
	// Shutdown, when set, is called after /shutdown has been answered; it
	// stops everything and powers off or reboots (PID 1 only). Nil makes
	// /shutdown fail with failed_precondition.
	Shutdown func(action string)
	// OutputGrace is how long an exec waits, after its process exited, for
	// children that inherited stdout or stderr to close them before the exit
	// status is sent anyway. Default 1s.
	OutputGrace time.Duration
	// KeepExited is how many exited processes /processes remembers.
	// Default 64.
	KeepExited int
}

// Validate reports what is wrong with c, if anything.
func (c *Config) Validate() error {
	if c.OutputGrace < 0 {
		return fmt.Errorf("output grace %v is negative", c.OutputGrace)
	}
	if c.KeepExited < 0 {
		return fmt.Errorf("keep-exited %d is negative", c.KeepExited)
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.System == nil {
		c.System = HostSystem{}
	}
	if c.EtcDir == "" {
		c.EtcDir = "/etc"
	}
	if c.OutputGrace == 0 {
		c.OutputGrace = time.Second
	}
	if c.KeepExited == 0 {
		c.KeepExited = 64
	}
}

// Server is a running agent. Close stops it.
type Server struct {
	cfg    Config
	log    *slog.Logger
	reaper *reaper
	procs  *procTable
	http   *http.Server

	mu       sync.Mutex
	defaults initState                 // guarded by mu
	initN    uint64                    // guarded by mu
	closed   bool                      // guarded by mu
	execs    map[*execSession]struct{} // guarded by mu

	closing chan struct{}  // closed when Close starts
	wg      sync.WaitGroup // exec goroutines
}

// initState is what POST /init leaves behind for later requests.
type initState struct {
	env     []string
	user    string
	workdir string
}

// New returns a Server; Serve makes it answer on a listener.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	cfg.setDefaults()
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger,
		reaper:  newReaper(cfg.ReapAll),
		procs:   newProcTable(cfg.KeepExited),
		execs:   make(map[*execSession]struct{}),
		closing: make(chan struct{}),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", s.handleHealth)
	mux.HandleFunc("POST /init", s.handleInit)
	mux.HandleFunc("POST /exec", s.handleExec)
	mux.HandleFunc("GET /processes", s.handleProcesses)
	mux.HandleFunc("POST /processes/{id}/signal", s.handleSignal)
	mux.HandleFunc("GET /files/stat", s.handleStat)
	mux.HandleFunc("GET /files/list", s.handleList)
	mux.HandleFunc("GET /files/content", s.handleDownload)
	mux.HandleFunc("PUT /files/content", s.handleUpload)
	mux.HandleFunc("POST /files/mkdir", s.handleMkdir)
	mux.HandleFunc("POST /files/remove", s.handleRemove)
	mux.HandleFunc("POST /files/rename", s.handleRename)
	mux.HandleFunc("POST /shutdown", s.handleShutdown)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, agentapi.Errorf(agentapi.KindNotFound, "no route %s %s", r.Method, r.URL.Path))
	})
	s.http = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		// Idle keep-alive connections from clients that went away (or
		// from before a restore) are not kept forever.
		IdleTimeout: 2 * time.Minute,
		ErrorLog:    slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	return s, nil
}

// Serve answers on ln until Close. Accept errors do not end it: after a
// snapshot restore the VMM resets live connections and accept can fail with
// ECONNRESET or ECONNABORTED, but the listening socket is fine. Serve returns
// nil after Close.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("serving: server is closed")
	}
	s.mu.Unlock()
	err := s.http.Serve(&retryListener{Listener: ln, log: s.log})
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close stops serving, drops exec streams (killing processes not started
// detached), stops the reaper and waits for the server's goroutines.
// Detached processes keep running.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.closing)
	sessions := make([]*execSession, 0, len(s.execs))
	for e := range s.execs {
		sessions = append(sessions, e)
	}
	s.mu.Unlock()
	err := s.http.Close()
	for _, e := range sessions {
		e.conn.Close()
	}
	s.wg.Wait()
	s.reaper.close()
	return err
}

// SignalAll sends sig to the process group of every running process the
// agent started; PID 1 forwards the signals it receives this way.
func (s *Server) SignalAll(sig os.Signal) {
	s.procs.signalAll(sig)
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.health())
}

func (s *Server) health() agentapi.Health {
	s.mu.Lock()
	n := s.initN
	s.mu.Unlock()
	h, _ := s.cfg.System.Hostname()
	return agentapi.Health{
		Protocol:    agentapi.ProtocolVersion,
		Version:     s.cfg.Version,
		Initialized: n > 0,
		InitCount:   n,
		PID:         os.Getpid(),
		Hostname:    h,
	}
}

func (s *Server) handleInit(w http.ResponseWriter, r *http.Request) {
	var req agentapi.InitRequest
	if !readJSON(w, r, &req) {
		return
	}
	if err := s.init(req); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.health())
}

func (s *Server) init(req agentapi.InitRequest) error {
	if err := req.Validate(); err != nil {
		return err
	}
	if req.User != "" {
		if _, err := lookupUser(s.cfg.EtcDir, req.User); err != nil {
			return fmt.Errorf("init: %w", err)
		}
	}
	if req.Workdir != "" {
		if err := checkDir(req.Workdir); err != nil {
			return fmt.Errorf("init workdir: %w", err)
		}
	}
	// Clock and entropy first: they matter most for a restored clone.
	if !req.Time.IsZero() {
		if err := s.cfg.System.SetClock(req.Time); err != nil {
			return fmt.Errorf("setting the clock: %w", err)
		}
	}
	if len(req.Entropy) > 0 {
		if err := s.cfg.System.AddEntropy(req.Entropy); err != nil {
			return fmt.Errorf("adding entropy: %w", err)
		}
	}
	if req.Hostname != "" {
		if err := s.cfg.System.SetHostname(req.Hostname); err != nil {
			return fmt.Errorf("setting the hostname: %w", err)
		}
	}
	s.mu.Lock()
	s.defaults = initState{env: req.Env, user: req.User, workdir: req.Workdir}
	s.initN++
	n := s.initN
	s.mu.Unlock()
	s.log.Info("initialized", "count", n, "hostname", req.Hostname, "entropy_bytes", len(req.Entropy))
	return nil
}

func (s *Server) initDefaults() initState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.defaults
}

func (s *Server) handleShutdown(w http.ResponseWriter, r *http.Request) {
	var req agentapi.ShutdownRequest
	if !readJSON(w, r, &req) {
		return
	}
	if err := req.Validate(); err != nil {
		writeError(w, err)
		return
	}
	if s.cfg.Shutdown == nil {
		writeError(w, agentapi.Errorf(agentapi.KindPrecondition, "this agent is not the guest's init (PID 1): it does not shut the machine down"))
		return
	}
	action := req.Action
	if action == "" {
		action = agentapi.ShutdownPoweroff
	}
	w.WriteHeader(http.StatusAccepted)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	s.log.Info("shutdown requested", "action", action)
	go s.cfg.Shutdown(action)
}

// maxJSONBody caps request bodies that are JSON.
const maxJSONBody = 1 << 20

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxJSONBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, agentapi.Errorf(agentapi.KindInvalid, "decoding %s %s body: %v", r.Method, r.URL.Path, err))
		return false
	}
	if _, err := dec.Token(); err != io.EOF {
		writeError(w, agentapi.Errorf(agentapi.KindInvalid, "%s %s body has data after the JSON value", r.Method, r.URL.Path))
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// writeError is the one place errors become HTTP statuses.
func writeError(w http.ResponseWriter, err error) {
	kind := errorKind(err)
	writeJSON(w, agentapi.StatusForKind(kind), agentapi.Error{Kind: kind, Message: err.Error()})
}

// errorKind classifies err: an *agentapi.Error keeps its kind, file system
// errors map to the matching kind.
func errorKind(err error) agentapi.Kind {
	var ae *agentapi.Error
	switch {
	case errors.As(err, &ae):
		return ae.Kind
	case errors.Is(err, os.ErrNotExist):
		return agentapi.KindNotFound
	case errors.Is(err, os.ErrExist):
		return agentapi.KindExists
	case errors.Is(err, os.ErrPermission):
		return agentapi.KindPermission
	case isPrecondition(err):
		return agentapi.KindPrecondition
	}
	return agentapi.KindInternal
}
