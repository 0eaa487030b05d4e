package api

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/fcapi"
)

func TestListen(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(sock); !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "check that it is not already used") {
		t.Errorf("second Listen on %s: error %v, want EADDRINUSE saying the path is in use", sock, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewServer(newFakeMachine(t), testInfo, testLogger(t)).Serve(ctx, l) }()
	c := fcapi.NewClient(sock)
	defer c.Close()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := c.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after Serve returned: stat error %v, want it removed", err)
	}
	if _, err := Listen(filepath.Join(t.TempDir(), "no", "such", "dir", "api.sock")); err == nil {
		t.Error("Listen in a missing directory succeeded, want an error")
	}
}
