package shim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/thawvm/thaw/internal/conf"
	"github.com/thawvm/thaw/internal/uffd"
)

// pager holds what the page server needs before the handshake: the bound
// socket, the memory file and the prefetch order or the recorder. Opening
// it before the VMM starts makes a missing memory file fail the start, not
// the handshake.
type pager struct {
	cfg   Config
	log   *slog.Logger
	ln    *uffd.Listener
	src   *uffd.FileSource
	order *uffd.AccessLog
	rec   *uffd.Recorder

	closeOnce sync.Once
	closeErr  error // the recorder's error: the recording is incomplete
}

func openPager(cfg Config, log *slog.Logger) (_ *pager, err error) {
	p := &pager{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	if p.src, err = uffd.OpenFile(cfg.MemFile); err != nil {
		return nil, err
	}
	switch {
	case cfg.Pages == PagesRecord:
		if p.rec, err = uffd.CreateRecorder(cfg.RecordLog, p.src, uffd.PageSize4K); err != nil {
			return nil, err
		}
	case cfg.AccessLog != "":
		p.order = uffd.LoadAccessLog(cfg.AccessLog, p.src, log)
	}
	if p.ln, err = uffd.Listen(cfg.UFFDSocket()); err != nil {
		return nil, err
	}
	return p, nil
}

// closeListener stops accepting handshakes and removes the socket.
func (p *pager) closeListener() {
	if p.ln != nil {
		p.ln.Close()
	}
}

// close releases everything; the server using src must be closed first.
// It returns the recorder's error, if any.
func (p *pager) close() error {
	p.closeOnce.Do(func() {
		p.closeListener()
		if p.rec != nil {
			p.closeErr = p.rec.Close()
		}
		if p.src != nil {
			p.src.Close()
		}
	})
	return p.closeErr
}

// servePages accepts the VMM's handshake, reports the verdict and serves
// pages until ctx ends (the VMM is gone, or the shim is leaving) or serving
// fails, which kills the VMM.
func (s *supervisor) servePages(ctx context.Context, p *pager) {
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	hs, err := p.ln.Accept(hctx)
	cancel()
	p.closeListener() // one VMM, one handshake
	if err != nil {
		if ctx.Err() != nil {
			// The VMM exited or the shim is leaving; reap sets the verdict.
			return
		}
		reason := err.Error()
		if errors.Is(err, context.DeadlineExceeded) {
			reason = fmt.Sprintf("no UFFD handshake on %s within %v: the VMM never loaded a snapshot with the Uffd backend pointing there", p.ln.Path(), s.cfg.HandshakeTimeout)
		}
		s.setVerdict(Verdict{State: VerdictFailed, Reason: reason})
		s.fail("page server: " + reason)
		return
	}
	srv, err := uffd.NewServer(uffd.ServerParams{
		Config:    uffd.Config{DisablePrefetch: !s.cfg.Prefetch, PrefetchRate: s.cfg.PrefetchRate},
		Handshake: hs,
		Source:    p.src,
		Order:     p.order,
		Recorder:  p.rec,
		Logger:    s.log,
	})
	if err != nil {
		hs.Close()
		s.setVerdict(Verdict{State: VerdictFailed, Reason: err.Error()})
		s.fail(err.Error())
		return
	}
	defer srv.Close()
	regions := srv.Regions()
	s.setServer(srv, Verdict{State: VerdictOK, Regions: len(regions), PeerPID: hs.PeerPID})
	s.log.Info("UFFD handshake accepted", "regions", len(regions), "peer", hs.PeerPID, "prefetch", s.cfg.Prefetch, "prefetch_rate", conf.ByteRate(s.cfg.PrefetchRate).String(), "ordered", p.order != nil)

	var wg sync.WaitGroup
	sctx, stopSettle := context.WithCancel(ctx)
	if p.rec != nil {
		wg.Go(func() { s.watchSettle(sctx, p.rec) })
	}
	err = srv.Serve(ctx)
	stopSettle()
	wg.Wait()
	if err != nil {
		s.fail("page server: " + err.Error())
	}
}

// watchSettle runs the settle detector over the recorder's count and
// publishes the moment recording has converged.
func (s *supervisor) watchSettle(ctx context.Context, rec *uffd.Recorder) {
	cfg := uffd.SettleConfig{MinTime: s.cfg.SettleMin, MaxTime: s.cfg.SettleMax}
	start := time.Now()
	reason, err := uffd.WaitSettled(ctx, cfg, func() uint64 { return uint64(rec.Count()) })
	if err != nil {
		return // ctx ended: the VMM is gone
	}
	ferr := rec.Flush()
	after := time.Since(start)
	s.update(func(st *Status) {
		st.Settle = &SettleStatus{Settled: true, Reason: reason, After: after}
		if ferr != nil {
			st.Settle.Error = ferr.Error()
		}
	})
	s.log.Info("recording settled", "reason", reason, "after", after, "pages", rec.Count())
}
