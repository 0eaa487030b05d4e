package api

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/thawvm/thaw/internal/agentapi"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/thawapi"
)

// execStream writes an exec's events as newline-delimited JSON, flushing
// each, from the stdout and stderr copiers alike.
type execStream struct {
	mu sync.Mutex
	w  http.ResponseWriter
	rc *http.ResponseController
	// err is the first write error; guarded by mu.
	err error
}

func (s *execStream) send(ev thawapi.ExecEvent) error {
	data, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	if _, err := s.w.Write(append(data, '\n')); err != nil {
		s.err = err
		return err
	}
	s.rc.Flush()
	return nil
}

type streamWriter struct {
	s      *execStream
	stderr bool
}

func (w streamWriter) Write(p []byte) (int, error) {
	ev := thawapi.ExecEvent{Stdout: p}
	if w.stderr {
		ev = thawapi.ExecEvent{Stderr: p}
	}
	if err := w.s.send(ev); err != nil {
		return 0, err
	}
	return len(p), nil
}

// execSandbox runs a process in a sandbox through its agent. The body's
// first line is the JSON ExecRequest; with stdin set the rest of the body is
// streamed to the process (full duplex). The answer streams ExecEvents; a
// failure before the process starts is an ordinary error answer.
func (s *Server) execSandbox(w http.ResponseWriter, r *http.Request) error {
	m, err := s.manager()
	if err != nil {
		return err
	}
	br := bufio.NewReaderSize(r.Body, 64<<10)
	areq, wantStdin, err := parseExecHead(br)
	if err != nil {
		return err
	}
	rc := http.NewResponseController(w)
	var stdin io.Reader
	if wantStdin {
		if err := rc.EnableFullDuplex(); err != nil {
			return errdefs.NotImplemented("streaming stdin over this connection: %v", err)
		}
		stdin = br
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc.Flush()
	st := &execStream{w: w, rc: rc}
	status, err := m.Exec(r.Context(), r.PathValue("id"), areq, stdin, streamWriter{s: st}, streamWriter{s: st, stderr: true})
	if err != nil {
		ev := thawapi.ExecEvent{Error: err.Error()}
		if k := errdefs.KindOf(err); k != nil {
			ev.Kind = k.Error()
		}
		st.send(ev)
		return nil
	}
	st.send(thawapi.ExecEvent{Exit: &thawapi.ExitStatus{Code: status.Code, Signal: status.Signal, SignalName: status.SignalName, TimedOut: status.TimedOut}})
	return nil
}

// parseExecHead reads and checks the exec request line at the start of br;
// the rest of br is stdin when the request asks for it. Every error is an
// invalid argument.
func parseExecHead(br *bufio.Reader) (req agentapi.ExecRequest, stdin bool, err error) {
	line, err := readLine(br, maxBody)
	if err != nil {
		return req, false, err
	}
	var in thawapi.ExecRequest
	if err := decodeJSON(line, &in); err != nil {
		return req, false, err
	}
	req = agentapi.ExecRequest{Argv: in.Argv, Shell: in.Shell, Env: in.Env, Cwd: in.Cwd, User: in.User, TimeoutMS: in.TimeoutMS}
	if err := req.Validate(); err != nil {
		return req, false, errdefs.Mark(err, errdefs.ErrInvalidArgument)
	}
	return req, in.Stdin, nil
}

// readLine reads one line of at most limit bytes (without the newline).
func readLine(br *bufio.Reader, limit int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > limit {
			return nil, errdefs.InvalidArgument("request body: the exec request line is longer than %d bytes", limit)
		}
		if err == nil {
			return line[:len(line)-1], nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) {
			return line, nil
		}
		return nil, errdefs.InvalidArgument("reading request body: %v", err)
	}
}

// putFile streams the request body into a file in the sandbox
// (?path=...&mode=0644&mkdirs=true).
func (s *Server) putFile(w http.ResponseWriter, r *http.Request) error {
	m, err := s.manager()
	if err != nil {
		return err
	}
	q := r.URL.Query()
	opts := agentapi.UploadOptions{Mkdirs: q.Get("mkdirs") == "true"}
	if v := q.Get("mode"); v != "" {
		mode, err := strconv.ParseUint(v, 8, 32)
		if err != nil || mode > 0o7777 {
			return errdefs.InvalidArgument("mode %q: want octal permission bits such as 0644", v)
		}
		opts.Mode = uint32(mode)
	}
	fi, err := m.Upload(r.Context(), r.PathValue("id"), q.Get("path"), r.Body, opts)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, thawapi.FileInfo{Path: fi.Path, Size: fi.Size, Mode: fi.Mode})
	return nil
}

// getFile streams a file out of the sandbox (?path=...).
func (s *Server) getFile(w http.ResponseWriter, r *http.Request) error {
	m, err := s.manager()
	if err != nil {
		return err
	}
	rc, size, err := m.Download(r.Context(), r.PathValue("id"), r.URL.Query().Get("path"))
	if err != nil {
		return err
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	if size >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	}
	w.WriteHeader(http.StatusOK)
	io.Copy(w, rc)
	return nil
}
