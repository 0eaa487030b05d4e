package uffdtest

import (
	"context"
	"errors"
	"path/filepath"
	"sync"

	"github.com/thawvm/thaw/internal/uffd"
)

// TB is the part of testing.TB that ServeFile uses; taking it instead of
// testing.TB keeps the testing package out of thaw-pagebench, which links
// this package too.
type TB interface {
	Helper()
	TempDir() string
	Fatal(args ...any)
	Errorf(format string, args ...any)
	Cleanup(func())
}

// ServeFile runs a page server in this process for the memory file at
// memPath, on a fresh socket, until the test ends, and returns the socket's
// path. Every VMM that connects is served (from its own MAP_PRIVATE
// mapping of the file) with cfg; a page server that fails fails the test.
func ServeFile(t TB, memPath string, cfg uffd.Config) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "uffd.sock")
	l, err := uffd.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			hs, err := l.Accept(ctx)
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := serveFile(ctx, hs, memPath, cfg); err != nil {
					t.Errorf("page server for %s: %v", memPath, err)
				}
			}()
		}
	}()
	t.Cleanup(func() { cancel(); l.Close(); wg.Wait() })
	return sock
}

func serveFile(ctx context.Context, hs *uffd.Handshake, memPath string, cfg uffd.Config) error {
	src, err := uffd.OpenFile(memPath)
	if err != nil {
		hs.Close()
		return err
	}
	defer src.Close()
	srv, err := uffd.NewServer(uffd.ServerParams{Config: cfg, Handshake: hs, Source: src})
	if err != nil {
		hs.Close()
		return err
	}
	defer srv.Close()
	return srv.Serve(ctx)
}

// ErrBroken is what ServeFirstPageOnly's page server fails with.
var ErrBroken = errors.New("uffdtest: the page server broke after the first page")

// ServeFirstPageOnly runs, in this process, a page server that dies after
// the load: it accepts one VMM on sock, serves the first page of the
// memory file at memPath (a snapshot load's probe of the page server),
// fails on any other page with ErrBroken and closes its userfaultfd, as
// a shim does when serving fails. The VMM's vCPUs are then left waiting
// for pages nobody will serve. The channel gets Serve's result; the page
// server also stops when the test ends.
func ServeFirstPageOnly(t TB, sock, memPath string) <-chan error {
	t.Helper()
	src, err := uffd.OpenFile(memPath)
	if err != nil {
		t.Fatal(err)
	}
	l, err := uffd.Listen(sock)
	if err != nil {
		src.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		served <- serveFirstPage(ctx, l, src)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		l.Close()
		src.Close()
	})
	return served
}

func serveFirstPage(ctx context.Context, l *uffd.Listener, src *uffd.FileSource) error {
	hs, err := l.Accept(ctx)
	if err != nil {
		return err
	}
	srv, err := uffd.NewServer(uffd.ServerParams{Config: uffd.Config{DisablePrefetch: true}, Handshake: hs, Source: firstPageOnly{src}})
	if err != nil {
		hs.Close()
		return err
	}
	err = srv.Serve(ctx)
	srv.Close()
	return err
}

// firstPageOnly serves the first page of a memory file and fails every
// other read.
type firstPageOnly struct{ *uffd.FileSource }

func (s firstPageOnly) Bytes(off, n uint64) ([]byte, error) {
	if off != 0 {
		return nil, ErrBroken
	}
	return s.FileSource.Bytes(off, n)
}
