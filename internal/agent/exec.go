package agent

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/agentapi"
)

// defaultPath is PATH for processes whose environment sets none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// pipeSize is the capacity asked for output pipes: a bigger pipe lets a
// process write more between two reads by the agent (fewer context switches
// for bulk output). Best effort; the kernel caps it at fs.pipe-max-size.
const pipeSize = 1 << 20

// outputChunk is the most one output frame carries.
const outputChunk = 64 << 10

// execSpec is an ExecRequest resolved against the guest: who runs what, where.
type execSpec struct {
	path string // absolute program path
	argv []string
	env  []string
	dir  string
	cred *syscall.Credential // nil: run as the agent's own user
}

// prepare resolves req against the init defaults and the guest's files.
func (s *Server) prepare(req agentapi.ExecRequest) (execSpec, error) {
	if err := req.Validate(); err != nil {
		return execSpec{}, err
	}
	defs := s.initDefaults()
	acct, cred, err := s.resolveUser(firstNonEmpty(req.User, defs.user))
	if err != nil {
		return execSpec{}, err
	}
	env := mergeEnv(baseEnv(acct), defs.env, req.Env)

	dir := firstNonEmpty(req.Cwd, defs.workdir)
	if dir != "" {
		if err := checkDir(dir); err != nil {
			return execSpec{}, fmt.Errorf("working directory: %w", err)
		}
	} else if checkDir(acct.home) == nil {
		dir = acct.home
	} else {
		dir = "/"
	}

	argv := req.Argv
	if req.Shell != "" {
		argv = []string{"/bin/sh", "-c", req.Shell}
	}
	path, err := lookPath(argv[0], envValue(env, "PATH"), dir)
	if err != nil {
		return execSpec{}, err
	}
	return execSpec{path: path, argv: argv, env: env, dir: dir, cred: cred}, nil
}

// resolveUser looks spec up; an empty spec means the agent's own user. The
// credential is nil when the process can keep the agent's own ids.
func (s *Server) resolveUser(spec string) (account, *syscall.Credential, error) {
	if spec == "" {
		spec = strconv.Itoa(os.Geteuid())
	}
	a, err := lookupUser(s.cfg.EtcDir, spec)
	if err != nil {
		return account{}, nil, err
	}
	if int(a.uid) == os.Geteuid() && int(a.gid) == os.Getegid() && len(a.groups) == 0 {
		return a, nil, nil
	}
	if os.Geteuid() != 0 {
		return account{}, nil, agentapi.Errorf(agentapi.KindPermission, "running as uid %d:%d needs the agent to run as root (it runs as uid %d)", a.uid, a.gid, os.Geteuid())
	}
	return a, &syscall.Credential{Uid: a.uid, Gid: a.gid, Groups: a.groups}, nil
}

func baseEnv(a account) []string {
	env := []string{"PATH=" + defaultPath, "HOME=" + a.home}
	if a.name != "" {
		env = append(env, "USER="+a.name, "LOGNAME="+a.name)
	}
	return env
}

// mergeEnv concatenates environment lists; a later KEY replaces an earlier
// one in place.
func mergeEnv(lists ...[]string) []string {
	var out []string
	idx := make(map[string]int)
	for _, l := range lists {
		for _, kv := range l {
			k, _, _ := strings.Cut(kv, "=")
			if i, ok := idx[k]; ok {
				out[i] = kv
				continue
			}
			idx[k] = len(out)
			out = append(out, kv)
		}
	}
	return out
}

func envValue(env []string, key string) string {
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v
		}
	}
	return ""
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

// lookPath finds prog the way execvp does, but in the process's PATH rather
// than the agent's, and says clearly what is wrong when it fails.
func lookPath(prog, pathEnv, dir string) (string, error) {
	if strings.Contains(prog, "/") {
		p := prog
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if err := checkExecutable(p); err != nil {
			return "", err
		}
		return p, nil
	}
	var firstErr error
	for _, d := range filepath.SplitList(pathEnv) {
		if d == "" || !filepath.IsAbs(d) {
			continue // never search the working directory implicitly
		}
		p := filepath.Join(d, prog)
		err := checkExecutable(p)
		if err == nil {
			return p, nil
		}
		if firstErr == nil && !errors.Is(err, agentapi.ErrNotFound) {
			firstErr = err
		}
	}
	if firstErr != nil {
		return "", firstErr
	}
	return "", agentapi.Errorf(agentapi.KindNotFound, "program %q not found in PATH %q", prog, pathEnv)
}

func checkExecutable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return agentapi.Errorf(agentapi.KindNotFound, "program %s does not exist", p)
		}
		return err
	}
	if !fi.Mode().IsRegular() {
		return agentapi.Errorf(agentapi.KindPrecondition, "program %s is not a regular file", p)
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return agentapi.Errorf(agentapi.KindPermission, "program %s is not executable (mode %v)", p, fi.Mode().Perm())
	}
	return nil
}

// execSession is one exec stream: a process and the connection it talks on.
type execSession struct {
	s    *Server
	p    *proc
	conn net.Conn
	br   *bufio.Reader
	fw   *agentapi.FrameWriter

	stdin          *os.File // write end; nil when stdin is /dev/null
	stdout, stderr *os.File // read ends

	timedOut     atomic.Bool
	disconnected atomic.Bool
	stdinOnce    sync.Once
}

func (s *Server) handleExec(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), agentapi.ExecUpgrade) {
		writeError(w, agentapi.Errorf(agentapi.KindInvalid, "POST /exec needs headers Connection: Upgrade and Upgrade: %s", agentapi.ExecUpgrade))
		return
	}
	var req agentapi.ExecRequest
	if !readJSON(w, r, &req) {
		return
	}
	spec, err := s.prepare(req)
	if err != nil {
		writeError(w, err)
		return
	}
	e, err := s.spawn(spec, req)
	if err != nil {
		writeError(w, err)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		e.p.signal(unix.SIGKILL)
		e.abandon()
		writeError(w, fmt.Errorf("taking over the connection: %w", err))
		return
	}
	// The exec stream lives as long as the process: no deadlines.
	conn.SetDeadline(time.Time{})
	e.conn, e.br = conn, brw.Reader
	e.fw = agentapi.NewFrameWriter(conn)
	fmt.Fprintf(brw.Writer, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n%s: %s\r\n%s: %d\r\n\r\n",
		agentapi.ExecUpgrade, agentapi.HeaderExecID, e.p.id, agentapi.HeaderExecPID, e.p.child.pid)
	if err := brw.Writer.Flush(); err != nil {
		e.disconnect()
	}
	// Register under mu, which Close takes before it waits: a session is
	// either seen (and its connection closed) by Close, or refused here.
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		e.disconnect()
		conn.Close()
		e.closeParentEnds()
		return
	}
	s.execs[e] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go e.run(req)
}

// spawn creates the pipes and starts the process in a new process group.
func (s *Server) spawn(spec execSpec, req agentapi.ExecRequest) (*execSession, error) {
	var closeAfter []*os.File // child's ends, closed in the parent after fork
	defer func() {
		for _, f := range closeAfter {
			f.Close()
		}
	}()
	e := &execSession{s: s}
	var stdinR *os.File
	if req.Stdin {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("creating stdin pipe: %w", err)
		}
		stdinR, e.stdin = r, w
	} else {
		f, err := os.Open(os.DevNull)
		if err != nil {
			return nil, fmt.Errorf("opening %s for stdin: %w", os.DevNull, err)
		}
		stdinR = f
	}
	closeAfter = append(closeAfter, stdinR)
	outR, outW, err := os.Pipe()
	if err != nil {
		e.closeParentEnds()
		return nil, fmt.Errorf("creating stdout pipe: %w", err)
	}
	e.stdout = outR
	closeAfter = append(closeAfter, outW)
	errR, errW, err := os.Pipe()
	if err != nil {
		e.closeParentEnds()
		return nil, fmt.Errorf("creating stderr pipe: %w", err)
	}
	e.stderr = errR
	closeAfter = append(closeAfter, errW)
	unix.FcntlInt(outW.Fd(), unix.F_SETPIPE_SZ, pipeSize)
	unix.FcntlInt(errW.Fd(), unix.F_SETPIPE_SZ, pipeSize)

	c, err := s.reaper.start(func(pidfd *int) (int, error) {
		return syscall.ForkExec(spec.path, spec.argv, &syscall.ProcAttr{
			Dir:   spec.dir,
			Env:   spec.env,
			Files: []uintptr{stdinR.Fd(), outW.Fd(), errW.Fd()},
			Sys: &syscall.SysProcAttr{
				Setpgid:    true, // its own group, so a kill reaches its children
				Credential: spec.cred,
				PidFD:      pidfd,
			},
		})
	})
	if err != nil {
		e.closeParentEnds()
		if errors.Is(err, os.ErrPermission) {
			return nil, agentapi.Errorf(agentapi.KindPermission, "starting %s: %v", spec.path, err)
		}
		return nil, fmt.Errorf("starting %s: %w", spec.path, err)
	}
	e.p = &proc{id: s.procs.newID(), argv: spec.argv, child: c, detached: req.Detach}
	s.procs.add(e.p)
	s.log.Debug("exec started", "id", e.p.id, "pid", c.pid, "argv", spec.argv)
	return e, nil
}

func (e *execSession) closeParentEnds() {
	for _, f := range []*os.File{e.stdin, e.stdout, e.stderr} {
		if f != nil {
			f.Close()
		}
	}
}

// abandon is for a process whose connection was never set up: it has been
// killed; wait for it in the background so it gets reaped and recorded.
func (e *execSession) abandon() {
	e.closeParentEnds()
	e.s.mu.Lock()
	defer e.s.mu.Unlock()
	if e.s.closed {
		return
	}
	e.s.wg.Add(1)
	go func() {
		defer e.s.wg.Done()
		select {
		case <-e.p.child.done:
			e.p.setExit(exitStatus(e.p.child.status))
		case <-e.s.closing:
		}
		e.s.procs.finish(e.p)
	}()
}

// run drives the session until the process has exited and its status has
// been sent, or the server closes.
func (e *execSession) run(req agentapi.ExecRequest) {
	defer e.s.wg.Done()
	defer func() {
		e.s.mu.Lock()
		delete(e.s.execs, e)
		e.s.mu.Unlock()
	}()
	var pumps sync.WaitGroup
	pumps.Add(2)
	go e.pump(&pumps, e.stdout, agentapi.FrameStdout)
	go e.pump(&pumps, e.stderr, agentapi.FrameStderr)
	inputDone := make(chan struct{})
	go e.input(inputDone)

	if req.TimeoutMS > 0 {
		t := time.AfterFunc(time.Duration(req.TimeoutMS)*time.Millisecond, func() {
			e.timedOut.Store(true)
			e.p.signal(unix.SIGKILL)
		})
		defer t.Stop()
	}

	select {
	case <-e.p.child.done:
	case <-e.s.closing:
		if e.p.detached {
			// The server is closing and the process outlives it.
			e.conn.Close()
			e.closeParentEnds()
			pumps.Wait()
			<-inputDone
			return
		}
		e.disconnect() // kills it; its input loop may be stuck on stdin
		<-e.p.child.done
	}
	st := exitStatus(e.p.child.status)
	st.TimedOut = e.timedOut.Load() && st.Signal == int(unix.SIGKILL)
	e.p.setExit(st)
	e.closeStdin()

	// Children that inherited stdout or stderr may keep them open; give
	// them a moment, then stop reading.
	pumpsDone := make(chan struct{})
	go func() { pumps.Wait(); close(pumpsDone) }()
	grace := time.NewTimer(e.s.cfg.OutputGrace)
	select {
	case <-pumpsDone:
	case <-grace.C:
		e.stdout.Close()
		e.stderr.Close()
		<-pumpsDone
	}
	grace.Stop()
	e.stdout.Close()
	e.stderr.Close()

	e.s.procs.finish(e.p)
	if !e.disconnected.Load() {
		b, _ := json.Marshal(st)
		e.fw.WriteFrame(agentapi.FrameExit, b)
	}
	e.conn.Close()
	<-inputDone
	e.s.log.Debug("exec ended", "id", e.p.id, "status", st.String())
}

// pump copies one output pipe into frames. When the client is gone it keeps
// draining the pipe so a detached process never blocks on a full pipe.
func (e *execSession) pump(wg *sync.WaitGroup, f *os.File, t agentapi.FrameType) {
	defer wg.Done()
	buf := make([]byte, outputChunk)
	for {
		n, err := f.Read(buf)
		if n > 0 && !e.disconnected.Load() {
			if werr := e.fw.WriteFrame(t, buf[:n]); werr != nil {
				e.disconnect()
			}
		}
		if err != nil {
			return
		}
	}
}

// input reads the client's frames until the connection ends.
func (e *execSession) input(done chan<- struct{}) {
	defer close(done)
	var buf []byte
	for {
		t, p, err := agentapi.ReadFrame(e.br, buf)
		if err != nil {
			e.disconnect()
			return
		}
		buf = p[:0]
		switch t {
		case agentapi.FrameStdin:
			if e.stdin == nil {
				continue // stdin was not asked for; drop
			}
			if err := e.writeStdin(p); err != nil {
				e.closeStdin() // the process closed its stdin; drop the rest
			}
			if e.disconnected.Load() {
				return
			}
		case agentapi.FrameStdinClose:
			e.closeStdin()
		case agentapi.FrameSignal:
			sig, err := parseSignal(string(p))
			if err == nil {
				err = e.p.signal(sig)
			}
			if err != nil {
				e.s.log.Info("exec signal not sent", "id", e.p.id, "err", err)
			}
		default:
			e.s.log.Info("exec: unexpected frame from client; closing", "id", e.p.id, "type", t.String())
			e.disconnect()
			e.conn.Close()
			return
		}
	}
}

// stdinPoll is how often a stdin write that the process does not take checks
// whether the client is still there.
const stdinPoll = 100 * time.Millisecond

// writeStdin writes p to the process's stdin. While the process does not
// read, no further frames are read either (that is the backpressure), so a
// client hanging up would go unnoticed: the write wakes up every stdinPoll
// to look for the hang-up and treats it as a disconnect.
func (e *execSession) writeStdin(p []byte) error {
	for len(p) > 0 {
		e.stdin.SetWriteDeadline(time.Now().Add(stdinPoll))
		n, err := e.stdin.Write(p)
		p = p[n:]
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if peerGone(e.conn) {
				e.disconnect()
				return nil
			}
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// peerGone reports whether the other end of conn has hung up, without
// reading from it.
func peerGone(conn net.Conn) bool {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	gone := false
	err = rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		if n, err := unix.Poll(fds, 0); err == nil && n > 0 {
			gone = fds[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
		}
	})
	return gone || err != nil
}

// disconnect marks the client gone. A process not started detached is
// killed with its group; a detached one keeps running with stdin closed and
// output discarded.
func (e *execSession) disconnect() {
	if e.disconnected.Swap(true) {
		return
	}
	if !e.p.detached {
		e.p.signal(unix.SIGKILL)
	}
	e.closeStdin()
}

func (e *execSession) closeStdin() {
	e.stdinOnce.Do(func() {
		if e.stdin != nil {
			e.stdin.Close()
		}
	})
}

func (s *Server) handleProcesses(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.procs.list())
}

func (s *Server) handleSignal(w http.ResponseWriter, r *http.Request) {
	var req agentapi.SignalRequest
	if !readJSON(w, r, &req) {
		return
	}
	sig, err := parseSignal(req.Signal)
	if err != nil {
		writeError(w, err)
		return
	}
	id := r.PathValue("id")
	p, ok := s.procs.get(id)
	if !ok {
		writeError(w, agentapi.Errorf(agentapi.KindNotFound, "no process %q: GET /processes lists them", id))
		return
	}
	if err := p.signal(sig); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
