package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/thawvm/thaw/internal/fcapi"
)

// MaxBodySize is the largest request body the server reads: Firecracker's
// default --http-api-max-payload-size.
const MaxBodySize = 51200

// shutdownGrace bounds how long Serve waits for an answer in flight when it
// stops.
const shutdownGrace = 5 * time.Second

// Server serves the Firecracker API for one Machine. It is an http.Handler;
// Serve runs it on a listener.
type Server struct {
	m   Machine
	log *slog.Logger
	mux *http.ServeMux

	// fatal carries the error that ends the process (a failed snapshot
	// load) to Serve; it holds at most one.
	fatal chan error
	// stopping is closed when Serve stops; operations in flight see their
	// context cancelled.
	stopping     chan struct{}
	stoppingOnce sync.Once

	// mu serialises requests, as Firecracker's single API thread does, and
	// guards the fields below.
	mu sync.Mutex
	// info is what GET / answers; info.State is the instance state.
	info fcapi.InstanceInfo
	// configured is set by the first pre-boot configuration request that
	// parsed (Firecracker's boot_path): /snapshot/load is refused after it.
	configured bool
	// rootDrive is the ID of the drive configured as the root device, if
	// any: Firecracker allows one.
	rootDrive string
	// failed is the error of a failed snapshot load; every later request
	// is refused with it while the process exits.
	failed error
}

// NewServer returns a server for m. info supplies app_name, id and
// vmm_version for GET / (an empty id becomes Firecracker's default,
// "anonymous-instance"; an empty app_name "thaw-vmm"); its state is ignored:
// a new server is always "Not started". A nil log discards.
func NewServer(m Machine, info fcapi.InstanceInfo, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	info.State = fcapi.StateNotStarted
	if info.ID == "" {
		info.ID = "anonymous-instance"
	}
	if info.AppName == "" {
		info.AppName = "thaw-vmm"
	}
	s := &Server{
		m:        m,
		log:      log,
		mux:      http.NewServeMux(),
		fatal:    make(chan error, 1),
		stopping: make(chan struct{}),
		info:     info,
	}
	for _, rt := range routes {
		pattern := rt.Method + " " + rt.Path
		if rt.Path == "/" {
			pattern = rt.Method + " /{$}"
		}
		s.mux.Handle(pattern, s.wrap(rt))
	}
	// Firecracker answers 400, not 404 or 405, for anything else.
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, unknownRoute(r))
	})
	return s
}

// unknownRoute is the answer to a request no route matches.
func unknownRoute(r *http.Request) error {
	if r.Method == http.MethodPut {
		switch strings.TrimSuffix(r.URL.Path, "/") {
		case "/drives", "/network-interfaces":
			return badRequest("The ID cannot be empty: want %s/{id}.", strings.TrimSuffix(r.URL.Path, "/"))
		case "/snapshot":
			return badRequest("Missing snapshot operation type: want /snapshot/create or /snapshot/load.")
		}
	}
	return badRequest("Invalid request method and/or path: %s %s.", r.Method, r.URL.Path)
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// ServeMux would answer a path with "//", "." or ".." segments with a
	// redirect to the cleaned path; Firecracker has no such paths.
	if p := r.URL.Path; p != "/" && strings.TrimSuffix(p, "/") != path.Clean(p) {
		s.writeError(w, r, unknownRoute(r))
		return
	}
	s.mux.ServeHTTP(w, r)
}

// Serve answers API requests on l until ctx ends (it then returns nil) or a
// snapshot load fails (it returns that error once the 400 answer is sent,
// and the caller should exit, as Firecracker does). It closes l. Call it
// once.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(l) }()

	var result error
	select {
	case <-ctx.Done():
	case result = <-s.fatal:
	case err := <-served:
		s.stop()
		return fmt.Errorf("serving the API on %s: %w", l.Addr(), err)
	}
	s.stop()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close()
	}
	<-served // http.ErrServerClosed
	return result
}

// check reports a broken invariant of the server's state; tests run it in
// cleanup.
func (s *Server) check() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.info.State {
	case fcapi.StateNotStarted, fcapi.StateRunning, fcapi.StatePaused:
	default:
		return fmt.Errorf("state is %q, not one of Firecracker's", s.info.State)
	}
	if s.rootDrive != "" && !s.configured {
		return fmt.Errorf("root drive %q recorded but nothing configured", s.rootDrive)
	}
	if s.failed != nil && s.info.State == fcapi.StateRunning {
		return fmt.Errorf("running after a failed load: %v", s.failed)
	}
	return nil
}

func (s *Server) stop() { s.stoppingOnce.Do(func() { close(s.stopping) }) }

// opContext returns the context for a Machine operation: not cancelled when
// the client goes away (Firecracker finishes an operation whatever the
// client does), but cancelled when Serve stops.
func (s *Server) opContext(r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	go func() {
		select {
		case <-s.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// Route is one method and path of the API, in OpenAPI's path template
// syntax (which is also net/http's pattern syntax).
type Route struct {
	Method string
	Path   string
}

// Routes lists every route the server serves; api/firecracker.yaml must
// describe exactly these (a test checks it).
func Routes() []Route {
	out := make([]Route, len(routes))
	for i, rt := range routes {
		out[i] = Route{rt.Method, rt.Path}
	}
	return out
}

// faultError is an error with the HTTP status it is answered with. Its
// message is the fault_message, worded as Firecracker words its own (which
// is why it may start with a capital letter).
type faultError struct {
	status int
	msg    string
	err    error // the Machine's error, if any
}

func (e *faultError) Error() string { return e.msg }
func (e *faultError) Unwrap() error { return e.err }

// machineError is the answer to a failed Machine call: 400, the category
// Firecracker uses for the route, and the Machine's own words.
func machineError(category string, err error) error {
	return &faultError{status: http.StatusBadRequest, msg: category + ": " + err.Error(), err: err}
}

func badRequest(format string, args ...any) error {
	return &faultError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

// The messages Firecracker answers calls in the wrong state with.
var (
	errPostBoot = badRequest("The requested operation is not supported after starting the microVM.")
	errPreBoot  = badRequest("The requested operation is not supported before starting the microVM.")
)

// statusOf maps an error to its HTTP status, in one place: Firecracker
// answers every failed request on these routes with 400 Bad Request,
// Machine errors included.
func statusOf(err error) int {
	var fe *faultError
	if errors.As(err, &fe) {
		return fe.status
	}
	return http.StatusBadRequest
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status := statusOf(err)
	s.log.Info("api request failed", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	writeJSON(w, status, fcapi.Error{FaultMessage: err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil { // only this package's plain types are written
		panic(fmt.Sprintf("encoding %T: %v", v, err))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(b)
}

// wrap turns a route into a handler: it reads and checks the body as
// Firecracker does, serialises the call, refuses everything after a failed
// snapshot load, and writes the answer (200 with JSON, 204, or an error).
func (s *Server) wrap(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := readBody(w, r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		switch {
		case r.Method == http.MethodGet && len(body) > 0:
			s.writeError(w, r, badRequest("GET request cannot have a body."))
			return
		case r.Method != http.MethodGet && len(body) == 0:
			s.writeError(w, r, badRequest("Empty %s request.", r.Method))
			return
		}
		ctx, cancel := s.opContext(r)
		defer cancel()
		start := time.Now()

		s.mu.Lock()
		var out any
		if s.failed != nil {
			err = badRequest("The snapshot load failed and this VMM is exiting: %v", s.failed)
		} else {
			out, err = rt.handle(s, ctx, r, body)
		}
		s.mu.Unlock()

		s.log.Debug("api request", "method", r.Method, "path", r.URL.Path, "took", time.Since(start), "err", err)
		switch {
		case err != nil:
			s.writeError(w, r, err)
		case out != nil:
			writeJSON(w, http.StatusOK, out)
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	})
}

// readBody reads the request body, refusing one over MaxBodySize with
// Firecracker's message.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if r.ContentLength > MaxBodySize {
		return nil, badRequest("Request payload with size %d is larger than the limit of %d allowed by server.", r.ContentLength, MaxBodySize)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodySize))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, badRequest("Request payload is larger than the limit of %d allowed by server.", MaxBodySize)
	}
	if err != nil {
		return nil, badRequest("Reading the request body: %v", err)
	}
	return body, nil
}
