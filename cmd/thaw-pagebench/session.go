package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/thawvm/thaw/internal/uffd"
	"github.com/thawvm/thaw/internal/uffd/uffdtest"
)

// session is a page server serving one fake VMM.
type session struct {
	l      *uffd.Listener
	proc   *uffdtest.Proc
	srv    *uffd.Server
	cancel context.CancelFunc
	done   chan error
	closed bool
}

var sessionSeq int

// startSession listens, starts the fake VMM, accepts its handshake and
// serves it in a goroutine that close (or wait) stops.
func startSession(dir string, spec uffdtest.Spec, src uffd.Source, cfg uffd.Config, order *uffd.AccessLog, log *slog.Logger) (*session, error) {
	sessionSeq++
	sock := filepath.Join(dir, fmt.Sprintf("uffd-%d.sock", sessionSeq))
	l, err := uffd.Listen(sock)
	if err != nil {
		return nil, err
	}
	spec.Socket = sock
	proc, err := uffdtest.Start(spec)
	if err != nil {
		l.Close()
		return nil, err
	}
	s := &session{l: l, proc: proc, done: make(chan error, 1)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hs, err := l.Accept(ctx)
	if err != nil {
		s.close()
		return nil, err
	}
	s.srv, err = uffd.NewServer(uffd.ServerParams{Config: cfg, Handshake: hs, Source: src, Order: order, Logger: log})
	if err != nil {
		hs.Close()
		s.close()
		return nil, err
	}
	sctx, scancel := context.WithCancel(context.Background())
	s.cancel = scancel
	go func() { s.done <- s.srv.Serve(sctx) }()
	return s, nil
}

// waitPrefetch waits until the prefetcher has finished.
func (s *session) waitPrefetch(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for !s.srv.Stats().PrefetchDone {
		if time.Now().After(deadline) {
			return fmt.Errorf("prefetch not finished after %v", limit)
		}
		time.Sleep(100 * time.Microsecond)
	}
	return nil
}

// memoryFile writes a deterministic memory file of size bytes from seed
// in dir and opens it as a page source.
func memoryFile(dir string, size int64, seed uint64) (string, *uffd.FileSource, error) {
	mem := filepath.Join(dir, "memory")
	if err := uffdtest.WriteMemoryFile(mem, size, seed); err != nil {
		return "", nil, err
	}
	src, err := uffd.OpenFile(mem)
	if err != nil {
		return "", nil, err
	}
	return mem, src, nil
}

// prefetchWhole prefetches the whole memory file into a fake VMM that
// waits for it (one thread, disjoint pages over the layout whole), then
// lets the VMM verify every byte, and returns the page server's stats as
// they were when prefetch finished.
func prefetchWhole(dir, mem string, whole []uffdtest.Layout, src uffd.Source, cfg uffd.Config, log *slog.Logger) (uffd.Stats, error) {
	s, err := startSession(dir, uffdtest.Spec{MemFile: mem, Regions: whole, Threads: 1, Pattern: uffdtest.Disjoint, WaitStart: true},
		src, cfg, nil, log)
	if err != nil {
		return uffd.Stats{}, err
	}
	if err := s.waitPrefetch(5 * time.Minute); err != nil {
		s.close()
		return uffd.Stats{}, err
	}
	st := s.srv.Stats()
	s.proc.Go() // then verify every byte
	if _, _, err := s.wait(5 * time.Minute); err != nil {
		return uffd.Stats{}, err
	}
	return st, nil
}

// wait waits up to limit for the fake VMM to finish (every thread done, every
// byte checked) and for Serve to stop on its own; a VMM still running
// after limit has wedged threads.
func (s *session) wait(limit time.Duration) (*uffdtest.Result, uffd.Stats, error) {
	type out struct {
		res *uffdtest.Result
		err error
	}
	ch := make(chan out, 1)
	go func() {
		res, err := s.proc.Wait()
		ch <- out{res, err}
	}()
	var o out
	select {
	case o = <-ch:
	case <-time.After(limit):
		s.proc.Kill()
		<-ch
		st := s.srv.Stats()
		s.close()
		return nil, st, fmt.Errorf("fake VMM still running after %v: wedged threads (%v)", limit, st)
	}
	var serr error
	select {
	case serr = <-s.done:
		s.done <- serr
	case <-time.After(10 * time.Second):
		serr = errors.New("page server did not stop within 10s of the VMM exiting")
	}
	st := s.srv.Stats()
	s.close()
	return o.res, st, errors.Join(o.err, serr)
}

func (s *session) close() {
	if s.closed {
		return
	}
	s.closed = true
	s.proc.Kill()
	if s.cancel != nil {
		s.cancel()
		err := <-s.done
		s.done <- err
	}
	if s.srv != nil {
		s.srv.Close()
	}
	s.l.Close()
}
