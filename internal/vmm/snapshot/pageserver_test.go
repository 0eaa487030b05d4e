package snapshot

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/uffd"
)

// Page servers for the tests: in-process (goroutines) or in a child
// process (this test binary re-executed), since killing a page server
// mid-restore needs a process to kill.

const pageServerEnv = "THAW_SNAPSHOT_TEST_PAGESERVER" // mode:socket:memfile

func TestMain(m *testing.M) {
	if spec := os.Getenv(pageServerEnv); spec != "" {
		os.Exit(pageServerMain(spec))
	}
	if spec := os.Getenv(vmmEnv); spec != "" {
		os.Exit(vmmMain(spec))
	}
	os.Exit(m.Run())
}

// Page server modes.
const (
	modeServe    = "serve"    // on demand, no prefetch
	modePrefetch = "prefetch" // on demand plus sequential prefetch
	modeHold     = "hold"     // take the handshake, never serve
)

// pageServerMain runs a page server child: it serves every VMM that
// connects until killed.
func pageServerMain(spec string) int {
	parts := strings.SplitN(spec, ":", 3)
	if len(parts) != 3 {
		fmt.Fprintf(os.Stderr, "%s=%q: want mode:socket:memfile\n", pageServerEnv, spec)
		return 2
	}
	mode, sock, mem := parts[0], parts[1], parts[2]
	l, err := uffd.Listen(sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	ps := newPageServers(mode, mem)
	ps.acceptLoop(context.Background(), l)
	return 0
}

// pageServers serves every handshake a listener accepts from one memory
// file.
type pageServers struct {
	mode, memPath string
	wg            sync.WaitGroup
	mu            sync.Mutex
	// held are handshakes kept unserved (modeHold), guarded by mu.
	held []*uffd.Handshake
	// errs collects Serve errors, guarded by mu.
	errs []error
}

func newPageServers(mode, memPath string) *pageServers {
	return &pageServers{mode: mode, memPath: memPath}
}

func (ps *pageServers) acceptLoop(ctx context.Context, l *uffd.Listener) {
	for {
		hs, err := l.Accept(ctx)
		if err != nil {
			return
		}
		if ps.mode == modeHold {
			ps.mu.Lock()
			ps.held = append(ps.held, hs)
			ps.mu.Unlock()
			continue
		}
		ps.wg.Add(1)
		go func() {
			defer ps.wg.Done()
			err := ps.serve(ctx, hs)
			if err != nil {
				ps.mu.Lock()
				ps.errs = append(ps.errs, err)
				ps.mu.Unlock()
			}
		}()
	}
}

func (ps *pageServers) serve(ctx context.Context, hs *uffd.Handshake) error {
	src, err := uffd.OpenFile(ps.memPath)
	if err != nil {
		hs.Close()
		return err
	}
	defer src.Close()
	srv, err := uffd.NewServer(uffd.ServerParams{Handshake: hs, Source: src, Config: uffd.Config{DisablePrefetch: ps.mode != modePrefetch}})
	if err != nil {
		hs.Close()
		return err
	}
	defer srv.Close()
	return srv.Serve(ctx)
}

// startPageServer runs page servers in this process on a fresh socket
// until the test ends, and returns the socket path.
func startPageServer(t testing.TB, mode, memPath string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "uffd.sock")
	l, err := uffd.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ps := newPageServers(mode, memPath)
	done := make(chan struct{})
	go func() {
		defer close(done)
		ps.acceptLoop(ctx, l)
	}()
	t.Cleanup(func() {
		cancel()
		l.Close()
		<-done
		ps.wg.Wait()
		ps.mu.Lock()
		defer ps.mu.Unlock()
		for _, h := range ps.held {
			h.Close()
		}
		for _, err := range ps.errs {
			t.Errorf("page server: %v", err)
		}
	})
	return sock
}

// pageServerProc is a page server child process.
type pageServerProc struct {
	cmd      *exec.Cmd
	sock     string
	killOnce sync.Once
}

// startPageServerProc starts a page server child and waits until it
// listens. The test kills it at the end if it still runs.
func startPageServerProc(t testing.TB, mode, memPath string) *pageServerProc {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "uffd.sock")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), pageServerEnv+"="+mode+":"+sock+":"+memPath)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &pageServerProc{cmd: cmd, sock: sock}
	t.Cleanup(p.kill)
	ready := make(chan error, 1)
	go func() {
		buf := make([]byte, 6)
		_, err := out.Read(buf)
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("page server child: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("page server child did not start within 30s")
	}
	return p
}

// kill kills the child (SIGKILL: no chance to clean up, as in a crash)
// and reaps it; safe to call more than once and from any goroutine.
func (p *pageServerProc) kill() {
	p.killOnce.Do(func() {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	})
}
