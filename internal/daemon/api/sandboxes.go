package api

import (
	"net/http"
	"time"

	"github.com/thawvm/thaw/internal/daemon/sandbox"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/daemon/template"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/thawapi"
)

// manager returns the sandbox manager, or an "unavailable" error saying why
// there is none.
func (s *Server) manager() (*sandbox.Manager, error) {
	if s.sandbox == nil {
		return nil, errdefs.Unavailable("this thawd runs no sandbox manager (started without a shim and VMM)")
	}
	return s.sandbox, nil
}

// maxTTL bounds ttl_seconds (a year), so the expiry time cannot overflow.
const maxTTL = 366 * 24 * time.Hour

func (s *Server) createSandbox(w http.ResponseWriter, r *http.Request) error {
	m, err := s.manager()
	if err != nil {
		return err
	}
	var req thawapi.CreateSandbox
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if req.Template == "" {
		return errdefs.InvalidArgument("request body: template is required")
	}
	if req.TTLSeconds < 0 || req.TTLSeconds > int64(maxTTL/time.Second) {
		return errdefs.InvalidArgument("ttl_seconds %d: want 0 (no TTL) up to %d", req.TTLSeconds, int64(maxTTL/time.Second))
	}
	sb, err := m.Create(r.Context(), sandbox.CreateRequest{ID: req.ID, Template: req.Template,
		TTL: time.Duration(req.TTLSeconds) * time.Second, Env: req.Env})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, sandboxOut(sb))
	return nil
}

func (s *Server) deleteSandbox(w http.ResponseWriter, r *http.Request) error {
	m, err := s.manager()
	if err != nil {
		return err
	}
	if err := m.Delete(r.Context(), r.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) pauseSandbox(w http.ResponseWriter, r *http.Request) error {
	m, err := s.manager()
	if err != nil {
		return err
	}
	sb, err := m.Pause(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sandboxOut(sb))
	return nil
}

func (s *Server) resumeSandbox(w http.ResponseWriter, r *http.Request) error {
	m, err := s.manager()
	if err != nil {
		return err
	}
	sb, err := m.Resume(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sandboxOut(sb))
	return nil
}

// registerTemplate registers an existing snapshot as a new build.
func (s *Server) registerTemplate(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := store.ValidateID("template name", name); err != nil {
		return err
	}
	var req thawapi.RegisterTemplate
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	rr := template.RegisterRequest{Name: name, VMState: req.VMState, Memory: req.Memory, Rootfs: req.Rootfs, Kernel: req.Kernel,
		VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB}
	if req.Ready != nil {
		rr.Ready = store.ReadyCheck{Kind: store.ReadyKind(req.Ready.Kind), Marker: req.Ready.Marker}
	}
	if s.sandbox != nil {
		rr.Record = s.sandbox.RecordFunc()
	}
	t, err := template.Register(r.Context(), s.store, s.layout, rr)
	if err != nil {
		return err
	}
	s.log.Info("template registered", "template", name, "build", t.Current)
	writeJSON(w, http.StatusCreated, templateOut(t))
	return nil
}
