package main

import (
	"context"
	"fmt"
	"sync"

	"github.com/thawvm/thaw/internal/uffd"
)

// pageServer serves one VMM's guest memory from a memory file with
// internal/uffd, on demand (prefetch off, so every page the restored guest
// touches is a real fault answered here), in this process — a different
// process from the VMM, as the shim's page server is.
type pageServer struct {
	sock   string
	cancel context.CancelFunc
	once   sync.Once
	done   chan struct{}
	result pageServerResult // set before done is closed
}

type pageServerResult struct {
	stats uffd.Stats
	err   error
}

func startPageServer(ctx context.Context, sock, memPath string) (*pageServer, error) {
	src, err := uffd.OpenFile(memPath)
	if err != nil {
		return nil, err
	}
	l, err := uffd.Listen(sock)
	if err != nil {
		src.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	ps := &pageServer{sock: sock, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(ps.done)
		defer src.Close()
		defer l.Close()
		hs, err := l.Accept(ctx)
		if err != nil {
			ps.result.err = fmt.Errorf("accepting the handshake: %w", err)
			return
		}
		srv, err := uffd.NewServer(uffd.ServerParams{Config: uffd.Config{DisablePrefetch: true}, Handshake: hs, Source: src})
		if err != nil {
			hs.Close()
			ps.result.err = err
			return
		}
		defer srv.Close()
		ps.result.err = srv.Serve(ctx)
		ps.result.stats = srv.Stats()
	}()
	return ps, nil
}

// stop ends the server (a no-op after the first call) and returns what it
// did.
func (ps *pageServer) stop() pageServerResult {
	ps.once.Do(ps.cancel)
	<-ps.done
	return ps.result
}
