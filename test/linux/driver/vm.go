package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"time"

	"github.com/thawvm/thaw/internal/fcapi"
)

// vm is one running thaw-vmm process: its API client, its console input and
// the serial output it has printed so far (also written to a log file).
type vm struct {
	name   string
	cmd    *exec.Cmd
	client *fcapi.Client
	stdin  io.WriteCloser
	done   chan struct{}
	err    error // the process's exit, once done is closed

	mu  sync.Mutex
	out bytes.Buffer // guarded by mu
	log *os.File     // guarded by mu
}

// startVM runs thaw-vmm with its API socket in dir and waits for the API.
// The serial console is also saved to <logDir>/<name>.serial.
func startVM(ctx context.Context, bin, dir, logDir, name string) (*vm, error) {
	sock := filepath.Join(dir, name+".sock")
	log, err := os.Create(filepath.Join(logDir, name+".serial"))
	if err != nil {
		return nil, err
	}
	v := &vm{name: name, done: make(chan struct{}), log: log}
	v.cmd = exec.Command(bin, "--api-sock", sock, "--id", name, "--level", "Info", "--log-path", filepath.Join(logDir, name+".log"))
	v.cmd.Stdout = v
	v.cmd.Stderr = v
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if v.stdin, err = v.cmd.StdinPipe(); err != nil {
		log.Close()
		return nil, err
	}
	if err := v.cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	go func() {
		v.err = v.cmd.Wait()
		close(v.done)
	}()
	v.client = fcapi.NewClient(sock)
	ready, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := v.client.WaitReady(ready); err != nil {
		v.kill()
		return nil, fmt.Errorf("%s: API socket not ready: %w\n%s", name, err, v.output())
	}
	return v, nil
}

// Write collects the VMM's output.
func (v *vm) Write(p []byte) (int, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.log.Write(p)
	return v.out.Write(p)
}

func (v *vm) output() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.out.String()
}

// waitFor waits until the output matches re and returns the match's groups.
func (v *vm) waitFor(re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	deadline := time.Now().Add(timeout)
	for {
		if m := re.FindStringSubmatch(v.output()); m != nil {
			return m, nil
		}
		select {
		case <-v.done:
			if m := re.FindStringSubmatch(v.output()); m != nil {
				return m, nil
			}
			return nil, fmt.Errorf("%s: thaw-vmm exited (%v) before printing /%s/; output:\n%s", v.name, v.err, re, tail(v.output()))
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s: no /%s/ after %v; output:\n%s", v.name, re, timeout, tail(v.output()))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// wait waits for thaw-vmm to exit and returns an error unless it exited 0.
func (v *vm) wait(timeout time.Duration) error {
	select {
	case <-v.done:
	case <-time.After(timeout):
		v.kill()
		return fmt.Errorf("%s: thaw-vmm still running after %v; output:\n%s", v.name, timeout, tail(v.output()))
	}
	var ee *exec.ExitError
	if errors.As(v.err, &ee) {
		return fmt.Errorf("%s: thaw-vmm exited %d, want 0; output:\n%s", v.name, ee.ExitCode(), tail(v.output()))
	}
	return v.err
}

// kill ends the process (if it still runs) and releases what v holds.
func (v *vm) kill() {
	v.cmd.Process.Kill()
	<-v.done
	v.client.Close()
	v.mu.Lock()
	v.log.Close()
	v.mu.Unlock()
}

// tail returns the last lines of s, enough to see where a guest stopped.
func tail(s string) string {
	const keep = 4000
	if len(s) > keep {
		return "...\n" + s[len(s)-keep:]
	}
	return s
}
