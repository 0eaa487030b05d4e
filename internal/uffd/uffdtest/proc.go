package uffdtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
)

// Proc is a running fake VMM.
type Proc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout bytes.Buffer
	stderr bytes.Buffer
	done   bool
}

// Start re-executes the running binary as a fake VMM following spec. The
// binary must call MaybeRunVMM first thing.
func Start(spec Spec) (*Proc, error) {
	if err := spec.validate(); err != nil {
		return nil, err
	}
	js, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding the running binary: %w", err)
	}
	p := &Proc{cmd: exec.Command(exe)}
	p.cmd.Env = append(os.Environ(), Env+"="+string(js))
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	// The child must die with us even if a test fails before Wait.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting fake VMM: %w", err)
	}
	return p, nil
}

// PID returns the child's pid.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Go releases a child started with WaitStart.
func (p *Proc) Go() error {
	_, err := io.WriteString(p.stdin, "go\n")
	return err
}

// Kill kills the child with SIGKILL (and reaps it).
func (p *Proc) Kill() {
	if p.done {
		return
	}
	p.cmd.Process.Kill()
	p.cmd.Wait()
	p.done = true
}

// Wait waits for the child and returns its result. A child that failed or
// reported mismatching bytes is an error naming what went wrong.
func (p *Proc) Wait() (*Result, error) {
	p.stdin.Close()
	err := p.cmd.Wait()
	p.done = true
	if err != nil {
		return nil, fmt.Errorf("fake VMM: %w: %s", err, bytes.TrimSpace(p.stderr.Bytes()))
	}
	var res Result
	if err := json.Unmarshal(p.stdout.Bytes(), &res); err != nil {
		return nil, fmt.Errorf("fake VMM result %q: %w", p.stdout.Bytes(), err)
	}
	if res.Mismatches > 0 {
		return &res, fmt.Errorf("fake VMM found %d pages differing from the memory file; first: %s", res.Mismatches, res.FirstBad)
	}
	return &res, nil
}
