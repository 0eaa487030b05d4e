package uffdtest

import (
	"context"
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
