package api

import (
	"net/http"

	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/daemon/template"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/thawapi"
)

func (s *Server) runs() (*template.Runs, error) {
	if s.builds == nil {
		return nil, errdefs.Unavailable("this thawd builds no templates (started without a shim and VMM); register an existing snapshot with PUT /v1/templates/{name}")
	}
	return s.builds, nil
}

func runOut(i template.RunInfo) thawapi.BuildRun {
	return thawapi.BuildRun{ID: i.ID, Template: i.Name, State: i.State, Reason: i.Reason, Build: i.Build,
		StartedAt: i.Started, FinishedAt: timePtr(i.Finished)}
}

// buildTemplate starts a template build and answers 202 with its run; the
// spec and the host (kernel, agent) are checked first, so a bad request
// starts nothing.
func (s *Server) buildTemplate(w http.ResponseWriter, r *http.Request) error {
	rs, err := s.runs()
	if err != nil {
		return err
	}
	var req thawapi.BuildTemplate
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	spec := template.BuildSpec{Name: req.Name, Source: template.ImageSource{Kind: req.Image.Kind, Path: req.Image.Path, Ref: req.Image.Ref},
		Start: req.Start, Warmup: req.Warmup, VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB, DiskMiB: req.DiskMiB}
	for _, st := range req.Steps {
		spec.Steps = append(spec.Steps, template.Step{Shell: st.Run, Env: st.Env, Workdir: st.Workdir})
	}
	if req.Ready != nil {
		spec.Ready = store.ReadyCheck{Kind: store.ReadyKind(req.Ready.Kind), Marker: req.Ready.Marker}
	}
	info, err := rs.Start(spec)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, runOut(info))
	return nil
}

func (s *Server) getBuildRun(w http.ResponseWriter, r *http.Request) error {
	rs, err := s.runs()
	if err != nil {
		return err
	}
	info, err := rs.Get(r.PathValue("name"), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, runOut(info))
	return nil
}

// getBuildLog answers the build log as text/plain; with ?follow=true the
// answer streams until the build ends.
func (s *Server) getBuildLog(w http.ResponseWriter, r *http.Request) error {
	rs, err := s.runs()
	if err != nil {
		return err
	}
	follow := false
	switch f := r.URL.Query().Get("follow"); f {
	case "", "false":
	case "true":
		follow = true
	default:
		return errdefs.InvalidArgument("follow=%q: want true or false", f)
	}
	name, id := r.PathValue("name"), r.PathValue("id")
	if _, err := rs.Get(name, id); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()
	// The status is sent: a failure from here on can only end the stream.
	if err := rs.CopyLog(r.Context(), name, id, follow, w, func() { rc.Flush() }); err != nil {
		s.log.Debug("build log stream ended", "build", id, "err", err)
	}
	return nil
}
