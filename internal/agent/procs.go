package agent

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/agentapi"
)

// proc is a process the agent started, attached or detached.
type proc struct {
	id       string
	argv     []string
	child    *child
	detached bool

	mu     sync.Mutex
	exited bool                // guarded by mu
	exit   agentapi.ExitStatus // guarded by mu
}

// signal sends sig to the process's group unless the process has been
// reaped (its pid, and so its group id, may then belong to someone else).
func (p *proc) signal(sig unix.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return agentapi.Errorf(agentapi.KindPrecondition, "process %s has exited", p.id)
	}
	if err := unix.Kill(-p.child.pid, sig); err != nil && err != unix.ESRCH {
		return fmt.Errorf("signalling process group %d: %w", p.child.pid, err)
	}
	return nil
}

func (p *proc) setExit(st agentapi.ExitStatus) {
	p.mu.Lock()
	p.exited = true
	p.exit = st
	p.mu.Unlock()
}

func (p *proc) info() agentapi.ProcessInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	pi := agentapi.ProcessInfo{ID: p.id, PID: p.child.pid, Argv: p.argv, Detached: p.detached, Running: !p.exited}
	if p.exited {
		st := p.exit
		pi.Exit = &st
	}
	return pi
}

// procTable holds running processes and the last few that exited.
type procTable struct {
	keep int

	mu     sync.Mutex
	next   uint64           // guarded by mu
	live   map[string]*proc // guarded by mu
	exited []*proc          // guarded by mu; oldest first, at most keep
}

func newProcTable(keep int) *procTable {
	return &procTable{keep: keep, live: make(map[string]*proc)}
}

func (t *procTable) newID() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.next++
	return "p" + strconv.FormatUint(t.next, 10)
}

func (t *procTable) add(p *proc) {
	t.mu.Lock()
	t.live[p.id] = p
	t.mu.Unlock()
}

func (t *procTable) finish(p *proc) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.live, p.id)
	t.exited = append(t.exited, p)
	if len(t.exited) > t.keep {
		t.exited = t.exited[len(t.exited)-t.keep:]
	}
}

func (t *procTable) get(id string) (*proc, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.live[id]; ok {
		return p, true
	}
	for _, p := range t.exited {
		if p.id == id {
			return p, true
		}
	}
	return nil, false
}

func (t *procTable) list() []agentapi.ProcessInfo {
	t.mu.Lock()
	ps := make([]*proc, 0, len(t.live)+len(t.exited))
	for _, p := range t.live {
		ps = append(ps, p)
	}
	ps = append(ps, t.exited...)
	t.mu.Unlock()
	out := make([]agentapi.ProcessInfo, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.info())
	}
	return out
}

func (t *procTable) signalAll(sig os.Signal) {
	s, ok := sig.(syscall.Signal)
	if !ok {
		return
	}
	t.mu.Lock()
	ps := make([]*proc, 0, len(t.live))
	for _, p := range t.live {
		ps = append(ps, p)
	}
	t.mu.Unlock()
	for _, p := range ps {
		p.signal(s)
	}
}

// parseSignal accepts a number ("9") or a name with or without the SIG
// prefix, in any case ("KILL", "sigterm").
func parseSignal(s string) (unix.Signal, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, agentapi.Errorf(agentapi.KindInvalid, "signal %d is out of range 1-64", n)
		}
		return unix.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, agentapi.Errorf(agentapi.KindInvalid, "unknown signal %q: use a number or a name such as TERM or SIGKILL", s)
}

// exitStatus converts a wait status.
func exitStatus(ws unix.WaitStatus) agentapi.ExitStatus {
	if ws.Signaled() {
		return agentapi.ExitStatus{Code: -1, Signal: int(ws.Signal()), SignalName: unix.SignalName(ws.Signal())}
	}
	return agentapi.ExitStatus{Code: ws.ExitStatus()}
}
