package api

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/thawapi"
)

func (s *Server) getVersion(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, thawapi.Version{Version: s.version, API: "v1"})
	return nil
}

func (s *Server) currentSettings() thawapi.Settings {
	return thawapi.Settings{UFFD: s.settings.UFFD(), RestoreSlots: slotsOut(s.settings.Slots().Stats())}
}

func (s *Server) getSettings(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, s.currentSettings())
	return nil
}

// patchSettings applies the fields given, all or none: every field is
// checked before any changes.
func (s *Server) patchSettings(w http.ResponseWriter, r *http.Request) error {
	var p thawapi.SettingsPatch
	if err := decodeBody(r, &p); err != nil {
		return err
	}
	if p.UFFD == nil && p.MaxConcurrentRestores == nil {
		return errdefs.InvalidArgument("request body sets nothing: give uffd and/or max_concurrent_restores")
	}
	if n := p.MaxConcurrentRestores; n != nil {
		if err := s.settings.Slots().Resize(*n); err != nil {
			return err
		}
		s.log.Info("restore slot limit changed", "limit", *n)
	}
	if p.UFFD != nil {
		s.settings.SetUFFD(*p.UFFD)
		s.log.Info("uffd switched", "on", *p.UFFD)
	}
	writeJSON(w, http.StatusOK, s.currentSettings())
	return nil
}

func (s *Server) listTemplates(w http.ResponseWriter, r *http.Request) error {
	ts, err := s.store.Templates()
	if err != nil {
		return err
	}
	out := make([]thawapi.Template, len(ts))
	for i, t := range ts {
		out[i] = templateOut(t)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getTemplate(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := store.ValidateID("template name", name); err != nil {
		return err
	}
	t, err := s.store.Template(name)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, templateOut(t))
	return nil
}

// deleteTemplate deletes a template's record, then its build directories.
// It is refused while sandboxes use the template or a build runs, unless
// ?force=true, which deletes the template's sandboxes first.
func (s *Server) deleteTemplate(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := store.ValidateID("template name", name); err != nil {
		return err
	}
	switch force := r.URL.Query().Get("force"); force {
	case "", "false":
	case "true":
		if _, err := s.store.Template(name); err != nil {
			return err
		}
		sbs, err := s.store.SandboxesUsing(name)
		if err != nil {
			return err
		}
		if len(sbs) > 0 {
			m, err := s.manager()
			if err != nil {
				return err
			}
			for _, sb := range sbs {
				if err := m.Delete(r.Context(), sb.ID); err != nil && !errdefs.IsNotFound(err) {
					return fmt.Errorf("forced delete of template %q: %w", name, err)
				}
			}
		}
	default:
		return errdefs.InvalidArgument("force=%q: want true or false", force)
	}
	t, err := s.store.DeleteTemplate(name)
	if err != nil {
		return err
	}
	for _, b := range t.Builds {
		if err := s.layout.RemoveBuild(name, b.ID); err != nil {
			return fmt.Errorf("template %q is deleted, but its files are not all gone: %w", name, err)
		}
	}
	s.log.Info("template deleted", "template", name, "builds", len(t.Builds))
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) listSandboxes(w http.ResponseWriter, r *http.Request) error {
	sbs, err := s.store.Sandboxes()
	if err != nil {
		return err
	}
	out := make([]thawapi.Sandbox, len(sbs))
	for i, sb := range sbs {
		out[i] = sandboxOut(sb)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getSandbox(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := store.ValidateID("sandbox id", id); err != nil {
		return err
	}
	sb, err := s.store.Sandbox(id)
	if err != nil {
		return err
	}
	out := sandboxOut(sb)
	if s.sandbox != nil {
		// A shim that does not answer at once leaves the page server
		// out; inspect must not hang on it.
		ctx, cancel := context.WithTimeout(r.Context(), pagesTimeout)
		if ps, ok := s.sandbox.Pages(ctx, sb); ok {
			out.Pages = pagesOut(ps)
		}
		cancel()
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// pagesTimeout bounds inspect's question to a sandbox's shim.
const pagesTimeout = 2 * time.Second

func (s *Server) getMetrics(w http.ResponseWriter, r *http.Request) error {
	if s.metrics == nil {
		return errdefs.NotFound("this thawd serves no metrics")
	}
	s.metrics.ServeHTTP(w, r)
	return nil
}
