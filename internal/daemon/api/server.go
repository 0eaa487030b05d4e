// Package api is thawd's REST/JSON API edge. It answers with
// internal/thawapi's wire types and owns the routes (each listed once in routes, which a test checks against the
// OpenAPI document in api/thawd.openapi.json), strict request decoding, the
// bearer-token check of the TCP listener, and the one place where an error's
// kind becomes an HTTP status (errdefs.HTTPStatus). Handlers call into the
// store and the run-time settings; they hold no state of their own.
//
// Served: version, run-time settings (the UFFD switch and the restore slot
// limit), listing, inspecting and registering templates (from an existing
// snapshot), deleting a template no sandbox uses, the sandbox lifecycle
// (create, inspect, delete, pause, resume, through internal/daemon/sandbox;
// exec and file transfer proxied to the guest agent, streamed) and
// metrics. Template builds from images are not served yet.
package api

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/thawvm/thaw/internal/daemon/layout"
	"github.com/thawvm/thaw/internal/daemon/live"
	"github.com/thawvm/thaw/internal/daemon/sandbox"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/errdefs"
)

// Options are what a Server serves from.
type Options struct {
	Store *store.Store
	// Layout locates build directories, which deleting a template removes.
	Layout   layout.Layout
	Settings *live.Settings
	// Logger receives one line per failed request (server errors at
	// error level, client errors at debug). Nil discards.
	Logger *slog.Logger
	// Version is reported by GET /v1/version.
	Version string
	// Metrics serves GET /metrics (Prometheus); nil answers 404.
	Metrics http.Handler
	// Sandboxes runs the sandbox lifecycle; nil answers its routes with
	// "unavailable".
	Sandboxes *sandbox.Manager
}

// Server routes API requests. Create it with New; it is safe for concurrent
// use.
type Server struct {
	store    *store.Store
	layout   layout.Layout
	settings *live.Settings
	log      *slog.Logger
	version  string
	metrics  http.Handler
	sandbox  *sandbox.Manager
	mux      *http.ServeMux
}

// route is one API operation. The pattern uses net/http's syntax, which for
// path parameters is also OpenAPI's ({name}).
type route struct {
	method  string
	path    string
	handler func(s *Server, w http.ResponseWriter, r *http.Request) error
}

// routes is the one list of the API's operations.
var routes = []route{
	{"GET", "/v1/version", (*Server).getVersion},
	{"GET", "/v1/settings", (*Server).getSettings},
	{"PATCH", "/v1/settings", (*Server).patchSettings},
	{"GET", "/v1/templates", (*Server).listTemplates},
	{"GET", "/v1/templates/{name}", (*Server).getTemplate},
	{"PUT", "/v1/templates/{name}", (*Server).registerTemplate},
	{"DELETE", "/v1/templates/{name}", (*Server).deleteTemplate},
	{"GET", "/v1/sandboxes", (*Server).listSandboxes},
	{"POST", "/v1/sandboxes", (*Server).createSandbox},
	{"GET", "/v1/sandboxes/{id}", (*Server).getSandbox},
	{"DELETE", "/v1/sandboxes/{id}", (*Server).deleteSandbox},
	{"POST", "/v1/sandboxes/{id}/pause", (*Server).pauseSandbox},
	{"POST", "/v1/sandboxes/{id}/resume", (*Server).resumeSandbox},
	{"POST", "/v1/sandboxes/{id}/exec", (*Server).execSandbox},
	{"GET", "/v1/sandboxes/{id}/files", (*Server).getFile},
	{"PUT", "/v1/sandboxes/{id}/files", (*Server).putFile},
	{"GET", "/metrics", (*Server).getMetrics},
}

// New returns a server for opts. Store, Layout and Settings are required.
func New(opts Options) (*Server, error) {
	if opts.Store == nil || opts.Settings == nil || opts.Layout.Root() == "" {
		return nil, errdefs.InvalidArgument("api server: Store, Layout and Settings are required")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{store: opts.Store, layout: opts.Layout, settings: opts.Settings, log: log, version: opts.Version, metrics: opts.Metrics, sandbox: opts.Sandboxes, mux: http.NewServeMux()}
	for _, rt := range routes {
		s.mux.HandleFunc(rt.method+" "+rt.path, func(w http.ResponseWriter, r *http.Request) {
			if err := rt.handler(s, w, r); err != nil {
				s.writeError(w, r, err)
			}
		})
	}
	// Anything else: a JSON 404 (or 405) in the API's error format rather
	// than net/http's text.
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, notRouted(r))
	})
	return s, nil
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	s.mux.ServeHTTP(w, r)
}

// NewHTTPServer returns an http.Server for h with the timeouts thawd uses
// on both listeners. Write timeouts are left to handlers, because exec and
// build logs stream for as long as they run.
func NewHTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
}
