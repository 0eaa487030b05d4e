package memory

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/testenv"
)

// TestPopulateReadWaitsForPageServer pins down what populate relies on
// (written up in present.go): madvise(MADV_POPULATE_READ) on a missing
// userfaultfd-registered range waits, through signals, until the page
// server serves it, then succeeds with the server's bytes; if instead every
// copy of the userfaultfd is closed, it succeeds with zeros.
func TestPopulateReadWaitsForPageServer(t *testing.T) {
	testenv.RequireUFFD(t)
	for _, resolve := range []string{"serve", "close every uffd copy"} {
		t.Run(resolve, func(t *testing.T) {
			s, err := newServed(t.TempDir(), 64*PageSize)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := s.close(); err != nil {
					t.Error(err)
				}
			}()
			span := s.mem.regions[0].Host[4*PageSize : 8*PageSize]
			tid := make(chan int, 1)
			res := make(chan error, 1)
			go func() {
				runtime.LockOSThread() // so the signals below reach this call
				defer runtime.UnlockOSThread()
				tid <- unix.Gettid()
				res <- unix.Madvise(span, unix.MADV_POPULATE_READ)
			}()
			target := <-tid
			waitFaultPending(t, s)
			// The Go runtime preempts with SIGURG; a wait that signals
			// could end would return EINTR (or EAGAIN) here.
			for range 20 {
				if err := unix.Tgkill(os.Getpid(), target, unix.SIGURG); err != nil {
					t.Fatal(err)
				}
				time.Sleep(2 * time.Millisecond)
			}
			select {
			case err := <-res:
				t.Fatalf("madvise(MADV_POPULATE_READ) returned %v before the page server answered, want it to wait", err)
			case <-time.After(50 * time.Millisecond):
			}
			want := s.content[4*PageSize : 8*PageSize]
			if resolve == "serve" {
				s.start()
			} else {
				want = make([]byte, len(span))
				if err := s.srv.Close(); err != nil {
					t.Fatal(err)
				}
				select {
				case err := <-res:
					t.Fatalf("madvise returned %v with the VMM's uffd copy still open, want it to wait", err)
				case <-time.After(50 * time.Millisecond):
				}
				if err := s.uffd.Close(); err != nil {
					t.Fatal(err)
				}
				s.uffd = nil
			}
			select {
			case err := <-res:
				if err != nil {
					t.Fatalf("madvise(MADV_POPULATE_READ): got %v, want success", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("madvise(MADV_POPULATE_READ) still waiting 10s after the page server answered")
			}
			if !bytes.Equal(span, want) {
				t.Errorf("populated pages: got %q..., want %q...", span[:16], want[:16])
			}
		})
	}
}

// TestWriteAfterZeroPage checks that Go code may write a page that Slice
// populated as the shared zero page (the page server answers a read fault
// on an all-zero page with UFFDIO_ZEROPAGE): the write is an ordinary
// copy-on-write fault, and the userfaultfd sees no new fault.
func TestWriteAfterZeroPage(t *testing.T) {
	testenv.RequireUFFD(t)
	s, err := newServed(t.TempDir(), 16*PageSize)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.close(); err != nil {
			t.Error(err)
		}
	}()
	s.start()
	const gpa = zeroPageMod * PageSize
	b, err := s.mem.Slice(gpa, PageSize)
	if err != nil {
		t.Fatal(err)
	}
	// The server counts an install just after the ioctl that woke us.
	before := s.srv.Stats()
	for deadline := time.Now().Add(10 * time.Second); before.FaultPages == 0 && time.Now().Before(deadline); before = s.srv.Stats() {
		time.Sleep(time.Millisecond)
	}
	if before.ZeroPages != 1 || before.Faults != 1 {
		t.Fatalf("after populating an all-zero page: got %d faults, %d zero pages; want 1 and 1", before.Faults, before.ZeroPages)
	}
	copy(b, "written after the zero page")
	got, err := s.mem.Slice(gpa, 7)
	if err != nil || string(got) != "written" {
		t.Fatalf("reading the page back: got %q, %v", got, err)
	}
	if after := s.srv.Stats(); after.Faults != before.Faults {
		t.Errorf("writing a zero-page mapping: the page server saw %d more faults, want none", after.Faults-before.Faults)
	}
}

// waitFaultPending waits until the userfaultfd has a message queued.
func waitFaultPending(t *testing.T, s *served) {
	t.Helper()
	rc, err := s.uffd.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var n int
		var perr error
		rc.Control(func(fd uintptr) {
			n, perr = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 100)
		})
		if perr != nil && perr != unix.EINTR {
			t.Fatal(perr)
		}
		if n == 1 {
			return
		}
	}
	t.Fatal("no page fault reached the userfaultfd within 10s")
}

// starveEnv makes the test binary run starveMain instead of the tests.
const starveEnv = "THAW_MEMORY_TEST_STARVE" // "populate" or "direct"

func TestMain(m *testing.M) {
	if mode := os.Getenv(starveEnv); mode != "" {
		os.Exit(starveMain(mode))
	}
	os.Exit(m.Run())
}

// TestGoAccessDoesNotStarvePageServer is the deadlock populate exists to
// prevent, in a child process (a deadlocked Go process cannot time itself
// out): with one P, goroutines read missing guest memory through Slice,
// Read and Uint64 while the page server runs in a goroutine of the same
// process. With populate they all finish. With it disabled the first
// user-mode fault holds the only P while it waits for a page server that
// can never run again, and the child must be killed.
func TestGoAccessDoesNotStarvePageServer(t *testing.T) {
	testenv.RequireUFFD(t)
	if testing.Short() {
		t.Skip("runs two child processes")
	}
	tests := []struct {
		mode     string
		deadlock bool
		wait     time.Duration // after the readers start
	}{
		// Generous: the machine is shared; a healthy run takes milliseconds.
		{mode: "populate", wait: 60 * time.Second},
		// A run that does not deadlock finishes in milliseconds.
		{mode: "direct", deadlock: true, wait: 3 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), starveEnv+"="+tt.mode, "TMPDIR="+t.TempDir())
			cmd.Stderr = os.Stderr
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			lines := make(chan string)
			go func() {
				sc := bufio.NewScanner(out)
				for sc.Scan() {
					lines <- sc.Text()
				}
				close(lines)
				exited <- cmd.Wait()
			}()
			defer func() {
				cmd.Process.Kill()
				for range lines {
				}
				<-exited
			}()
			var last string
			if last = next(t, lines, 30*time.Second); last != "readers started" {
				t.Fatalf("child: got %q, want \"readers started\"", last)
			}
			last = next(t, lines, tt.wait)
			switch {
			case tt.deadlock && last == "":
				// Deadlocked: check the child is where the explanation says.
				// (wchan reads "0" where the kernel hides symbols.)
				if w := wchans(cmd.Process.Pid); strings.Trim(w, "0 ") != "" && !strings.Contains(w, "handle_userfault") {
					t.Errorf("child stuck, but no thread waits in handle_userfault: %s", w)
				}
			case tt.deadlock:
				t.Fatalf("child with populate disabled: got %q, want it deadlocked (the test no longer shows what populate prevents)", last)
			case !strings.HasPrefix(last, "done"):
				t.Fatalf("child with populate: got %q after %v, want \"done\" (deadlocked? threads: %s)", last, tt.wait, wchans(cmd.Process.Pid))
			default:
				t.Logf("child: %s", last)
			}
		})
	}
}

// next returns the next line from lines, or "" after d or at its end.
func next(t *testing.T, lines <-chan string, d time.Duration) string {
	t.Helper()
	select {
	case l := <-lines:
		return l
	case <-time.After(d):
		return ""
	}
}

// wchans lists where each thread of pid sleeps in the kernel.
func wchans(pid int) string {
	dirs, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/wchan", pid))
	var w []string
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		w = append(w, string(b))
	}
	return strings.Join(w, " ")
}

// starveMain is the child of TestGoAccessDoesNotStarvePageServer.
func starveMain(mode string) int {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	populateDisabled = mode == "direct"
	const readers, pagesEach = 4, 16
	s, err := newServed(os.TempDir(), readers*pagesEach*PageSize)
	if err != nil {
		fmt.Fprintln(os.Stderr, "setting up served memory:", err)
		return 2
	}
	s.start()
	fmt.Println("readers started")
	var wg sync.WaitGroup
	errs := make(chan error, readers*pagesEach)
	for i := range readers {
		wg.Go(func() {
			for p := range pagesEach {
				off := uint64(i*pagesEach+p) * PageSize
				var err error
				switch p % 3 {
				case 0: // copy through Read
					b := make([]byte, 256)
					err = s.mem.Read(off+100, b)
					if err == nil && !bytes.Equal(b, s.content[off+100:off+356]) {
						err = fmt.Errorf("Read at %#x: wrong bytes", off+100)
					}
				case 1: // copy out of a Slice
					err = s.check(off, PageSize)
				case 2: // an 8-byte load
					var v uint64
					v, err = s.mem.Uint64(off + 8)
					if w := le64(s.content[off+8:]); err == nil && v != w {
						err = fmt.Errorf("Uint64 at %#x: got %#x, want %#x", off+8, v, w)
					}
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	st := s.srv.Stats()
	if err := s.close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("done: %d faults served, %d pages\n", st.Faults, st.FaultPages)
	return 0
}

func le64(b []byte) uint64 {
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}
