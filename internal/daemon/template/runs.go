package template

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/errdefs"
)

// Run states.
const (
	RunBuilding = "building"
	RunReady    = "ready"
	RunFailed   = "failed"
)

// MaxLogBytes caps a build log kept in memory; past it the log keeps its
// first half and says what was cut.
const MaxLogBytes = 8 << 20

// RunInfo describes a build run started by Runs.Start.
type RunInfo struct {
	// ID is the ephemeral build VM's id (store.EphemeralPrefix...).
	ID       string
	Name     string
	State    string
	Reason   string
	Build    string // the published build's id, once ready
	Started  time.Time
	Finished time.Time
}

// Runs starts builds in the background and keeps their status and logs in
// memory (never in the store, as build VMs are ephemeral): they last until
// thawd exits. It is safe for concurrent use.
type Runs struct {
	b   *Builder
	log *slog.Logger
	ctx context.Context

	wg   sync.WaitGroup
	mu   sync.Mutex
	runs map[string]*run // guarded by mu
}

type run struct {
	mu      sync.Mutex
	info    RunInfo
	buf     []byte
	cut     bool
	changed chan struct{} // closed and replaced on every write and at the end
	done    bool
}

// NewRuns returns a Runs building with b; ctx bounds every build (cancel
// it when thawd stops).
func NewRuns(ctx context.Context, b *Builder, log *slog.Logger) *Runs {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Runs{b: b, log: log, ctx: ctx, runs: map[string]*run{}}
}

// Start checks spec and the builder, then builds in the background. A
// spec or host problem is returned here, before anything is started.
func (rs *Runs) Start(spec BuildSpec) (RunInfo, error) {
	if err := spec.Validate(); err != nil {
		return RunInfo{}, err
	}
	if err := rs.b.Check(spec); err != nil {
		return RunInfo{}, err
	}
	rs.mu.Lock()
	for _, r := range rs.runs {
		if i := r.snapshot(); i.Name == spec.Name && i.State == RunBuilding {
			rs.mu.Unlock()
			return RunInfo{}, errdefs.AlreadyExists("template %q has a build running (%s): wait for it or look at its log", spec.Name, i.ID)
		}
	}
	var rnd [4]byte
	rand.Read(rnd[:])
	r := &run{info: RunInfo{ID: store.EphemeralPrefix + hex.EncodeToString(rnd[:]), Name: spec.Name, State: RunBuilding, Started: time.Now()},
		changed: make(chan struct{})}
	rs.runs[r.info.ID] = r
	rs.mu.Unlock()
	rs.log.Info("template build started", "template", spec.Name, "vm", r.info.ID)
	rs.wg.Add(1)
	go func() {
		defer rs.wg.Done()
		t, err := rs.b.Build(rs.ctx, r.info.ID, spec, r)
		r.finish(t, err)
		i := r.snapshot()
		rs.log.Info("template build ended", "template", spec.Name, "vm", i.ID, "state", i.State, "reason", i.Reason)
	}()
	return r.snapshot(), nil
}

// Wait waits until every build has ended. Cancel the context given to
// NewRuns first to end them early: each stops its VM on the way out, which
// must happen before thawd exits (the reconciler ignores build VMs).
func (rs *Runs) Wait() { rs.wg.Wait() }

// Get returns the run id of template name.
func (rs *Runs) Get(name, id string) (RunInfo, error) {
	r, err := rs.get(name, id)
	if err != nil {
		return RunInfo{}, err
	}
	return r.snapshot(), nil
}

func (rs *Runs) get(name, id string) (*run, error) {
	rs.mu.Lock()
	r := rs.runs[id]
	rs.mu.Unlock()
	if r == nil || r.snapshot().Name != name {
		return nil, errdefs.NotFound("no build %q of template %q in this thawd (build logs last until thawd restarts)", id, name)
	}
	return r, nil
}

// CopyLog writes the log of build id of template name to w, from the
// start; with follow it keeps writing until the build ends or ctx does.
// flush, if set, is called after every piece.
func (rs *Runs) CopyLog(ctx context.Context, name, id string, follow bool, w io.Writer, flush func()) error {
	r, err := rs.get(name, id)
	if err != nil {
		return err
	}
	off := 0
	for {
		r.mu.Lock()
		chunk, done, changed := r.buf[off:], r.done, r.changed
		r.mu.Unlock()
		if len(chunk) > 0 {
			if _, err := w.Write(chunk); err != nil {
				return err
			}
			off += len(chunk)
			if flush != nil {
				flush()
			}
		}
		if done || !follow {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		}
	}
}

// Write appends to the log (the build writes its progress here).
func (r *run) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cut {
		return len(p), nil
	}
	if len(r.buf)+len(p) > MaxLogBytes {
		r.buf = append(r.buf, p[:max(MaxLogBytes-len(r.buf), 0)]...)
		r.buf = append(r.buf, "\n==> log cut at 8 MiB\n"...)
		r.cut = true
	} else {
		r.buf = append(r.buf, p...)
	}
	close(r.changed)
	r.changed = make(chan struct{})
	return len(p), nil
}

func (r *run) finish(t store.Template, err error) {
	if err != nil {
		r.Write([]byte("==> build failed: " + err.Error() + "\n"))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.info.Finished = time.Now()
	if err != nil {
		r.info.State, r.info.Reason = RunFailed, err.Error()
	} else {
		r.info.State, r.info.Build = RunReady, t.Current
	}
	r.done = true
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *run) snapshot() RunInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.info
}
