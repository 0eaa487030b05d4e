package snapshot

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/vmm/kvm"
)

// A VMM child process for the tests that must kill or lose a page server
// under a running clone: this test binary re-executed with vmmEnv set
// restores the template through the Uffd backend, reports "running", and
// keeps asking its guest for checksums (which touch every pattern page)
// while it watches the page server, exiting as thaw-vmm does when the
// page server goes away.

const vmmEnv = "THAW_SNAPSHOT_TEST_VMM" // statePath:socket:firstCounter

// Exit codes of the VMM child.
const (
	vmmExitPageServerGone = 3
	vmmExitOther          = 4
)

func vmmMain(spec string) int {
	parts := strings.SplitN(spec, ":", 3)
	if len(parts) != 3 {
		fmt.Fprintf(os.Stderr, "%s=%q: want statePath:socket:firstCounter\n", vmmEnv, spec)
		return vmmExitOther
	}
	var first uint32
	fmt.Sscan(parts[2], &first)
	runtime.LockOSThread()
	sys, err := kvm.Open(kvm.DevicePath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return vmmExitOther
	}
	c, err := restore(context.Background(), sys, parts[0], fcapi.MemBackend{BackendType: fcapi.MemBackendUffd, BackendPath: parts[1]}, LoadOptions{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return vmmExitOther
	}
	if err := c.runCount(first, first+2); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return vmmExitOther
	}
	fmt.Println("running")
	// Wait for the parent to kill the page server, then make the guest
	// touch pages nobody served, and give it time to block on them before
	// watching the page server: the exit below must work with a vCPU
	// stuck in KVM_RUN.
	bufio.NewReader(os.Stdin).ReadString('\n')
	guest := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		_, err := c.checksum()
		guest <- fmt.Errorf("checksum returned (%v) although its pages could not be served", err)
	}()
	time.Sleep(200 * time.Millisecond)
	watch := make(chan error, 1)
	go func() { watch <- c.loaded.WatchPageServer(context.Background()) }()
	select {
	case err := <-watch:
		fmt.Fprintf(os.Stderr, "thaw-vmm: %v\n", err)
		if errors.Is(err, ErrPageServerGone) {
			return vmmExitPageServerGone
		}
	case err := <-guest:
		fmt.Fprintf(os.Stderr, "guest: %v\n", err)
	}
	return vmmExitOther
}

type vmmProc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr bytes.Buffer
}

// startVMMProc starts a VMM child restoring tpl from the page server at
// socket and waits until its guest runs.
func startVMMProc(t *testing.T, tpl template, socket string) *vmmProc {
	t.Helper()
	p := &vmmProc{cmd: exec.Command(os.Args[0], "-test.run=^$")}
	p.cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s:%s:%d", vmmEnv, tpl.statePath, socket, tpl.counter+1))
	p.cmd.Stderr = &p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			p.cmd.Wait()
		}
	})
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		if s != "running\n" {
			p.cmd.Wait()
			t.Fatalf("VMM child: got %q on stdout, want \"running\"; stderr %q", s, p.stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("VMM child did not start its guest within 30s")
	}
	return p
}

// proceed tells the child to start touching unserved pages.
func (p *vmmProc) proceed() { io.WriteString(p.stdin, "go\n") }

// wait waits up to timeout for the child to exit and returns its exit code
// and stderr; it fails the test if the child hangs.
func (p *vmmProc) wait(t *testing.T, timeout time.Duration) (int, string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		<-done
		t.Fatalf("VMM child still running %v after losing its page server (hung); stderr %q", timeout, p.stderr.String())
	}
	return p.cmd.ProcessState.ExitCode(), p.stderr.String()
}
