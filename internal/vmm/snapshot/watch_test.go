package snapshot

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestWatchPageServer checks both ends of the watch without any VM: it
// returns nil as soon as its context ends, although nothing else wakes
// it (it does not poll periodically), and ErrPageServerGone when the
// watched process exits.
func TestWatchPageServer(t *testing.T) {
	for _, how := range []string{"cancel", "exit"} {
		t.Run(how, func(t *testing.T) {
			cmd := exec.Command("sleep", "60")
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			fd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
			if err != nil {
				t.Skipf("pidfd_open: %v", err)
			}
			l := &Loaded{server: os.NewFile(uintptr(fd), "pidfd"), PageServerPID: cmd.Process.Pid}
			defer l.server.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- l.WatchPageServer(ctx) }()
			time.Sleep(50 * time.Millisecond) // let it reach poll(2)
			if how == "cancel" {
				cancel()
			} else {
				cmd.Process.Kill()
			}
			select {
			case err := <-done:
				switch {
				case how == "cancel" && err != nil:
					t.Errorf("after cancel: got %v, want nil", err)
				case how == "exit" && !errors.Is(err, ErrPageServerGone):
					t.Errorf("after the process exited: got %v, want ErrPageServerGone", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("WatchPageServer did not return within 10s of the %s", how)
			}
		})
	}
}
