package agentapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
)

// Exec is a running process started by Client.Start: its connection carries
// stdin, signals, output and the exit status as frames. Closing it (or
// cancelling Wait's context) drops the connection, which kills the process
// group unless the request asked to detach.
type Exec struct {
	id   string
	pid  int
	conn net.Conn
	br   *bufio.Reader
	fw   *FrameWriter

	closeOnce sync.Once
}

// Start starts a process and returns once the agent has started it. Errors
// from validation, user lookup, a missing program or working directory come
// back here as *Error, before any output.
func (c *Client) Start(ctx context.Context, req ExecRequest) (*Exec, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encoding exec request: %w", err)
	}
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("POST /exec: %w", err)
	}
	e, err := startOn(ctx, conn, body)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("POST /exec: %w", err)
	}
	return e, nil
}

func startOn(ctx context.Context, conn net.Conn, body []byte) (*Exec, error) {
	// Cancelling ctx during the exchange closes the connection.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	hreq, err := http.NewRequest(http.MethodPost, baseURL+"/exec", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Connection", "Upgrade")
	hreq.Header.Set("Upgrade", ExecUpgrade)
	if err := hreq.Write(conn); err != nil {
		return nil, ctxOr(ctx, err)
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	resp, err := http.ReadResponse(br, hreq)
	if err != nil {
		return nil, ctxOr(ctx, fmt.Errorf("reading answer: %w", err))
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer resp.Body.Close()
		return nil, responseError(resp)
	}
	if !stop() {
		return nil, ctx.Err()
	}
	pid, err := strconv.Atoi(resp.Header.Get(HeaderExecPID))
	if err != nil {
		return nil, fmt.Errorf("agent sent %s %q: %w", HeaderExecPID, resp.Header.Get(HeaderExecPID), err)
	}
	return &Exec{
		id:   resp.Header.Get(HeaderExecID),
		pid:  pid,
		conn: conn,
		br:   br,
		fw:   NewFrameWriter(conn),
	}, nil
}

func ctxOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// ID is the agent's id for the process (for Client.Signal).
func (e *Exec) ID() string { return e.id }

// PID is the process id inside the guest.
func (e *Exec) PID() int { return e.pid }

// Write sends p to the process's stdin (the request must have set Stdin).
func (e *Exec) Write(p []byte) (int, error) {
	if err := e.fw.WriteFrame(FrameStdin, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// CloseStdin closes the process's stdin.
func (e *Exec) CloseStdin() error { return e.fw.WriteFrame(FrameStdinClose, nil) }

// SendSignal sends sig (a name such as "TERM" or "SIGTERM", or a number) to
// the process group.
func (e *Exec) SendSignal(sig string) error { return e.fw.WriteFrame(FrameSignal, []byte(sig)) }

// Wait copies output to stdout and stderr (nil discards) as it arrives and
// returns the exit status. Cancelling ctx closes the connection, which kills
// the process unless it was started detached, and returns ctx.Err(). Wait
// returns an error if the output writers fail; the process is then killed
// the same way.
func (e *Exec) Wait(ctx context.Context, stdout, stderr io.Writer) (ExitStatus, error) {
	stop := context.AfterFunc(ctx, func() { e.Close() })
	defer stop()
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	var buf []byte
	for {
		t, p, err := ReadFrame(e.br, buf)
		if err != nil {
			e.Close()
			if ctx.Err() != nil {
				return ExitStatus{}, ctx.Err()
			}
			if errors.Is(err, io.EOF) {
				err = Errorf(KindUnavailable, "the agent closed the exec stream before an exit status")
			}
			return ExitStatus{}, fmt.Errorf("exec %s: %w", e.id, err)
		}
		buf = p[:0]
		switch t {
		case FrameStdout, FrameStderr:
			w := stdout
			if t == FrameStderr {
				w = stderr
			}
			if _, err := w.Write(p); err != nil {
				e.Close()
				return ExitStatus{}, fmt.Errorf("exec %s: writing %s: %w", e.id, t, err)
			}
		case FrameExit:
			var st ExitStatus
			err := json.Unmarshal(p, &st)
			e.Close()
			if err != nil {
				return ExitStatus{}, fmt.Errorf("exec %s: decoding exit status: %w", e.id, err)
			}
			return st, nil
		case FrameError:
			var ae Error
			e.Close()
			if err := json.Unmarshal(p, &ae); err != nil || ae.Kind == "" {
				return ExitStatus{}, Errorf(KindInternal, "exec %s: agent error %q", e.id, p)
			}
			return ExitStatus{}, fmt.Errorf("exec %s: %w", e.id, &ae)
		default:
			e.Close()
			return ExitStatus{}, fmt.Errorf("exec %s: unexpected %s frame from the agent", e.id, t)
		}
	}
}

// Close drops the connection. For a process not started detached, that kills
// its process group.
func (e *Exec) Close() error {
	var err error
	e.closeOnce.Do(func() { err = e.conn.Close() })
	return err
}

// Exec runs a process to completion: it streams stdin (if not nil) to it,
// copies its output to stdout and stderr as it is produced and returns its
// exit status. A stdin reader that blocks forever is abandoned (its goroutine
// ends when its Read returns) once the process has exited.
func (c *Client) Exec(ctx context.Context, req ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (ExitStatus, error) {
	req.Stdin = stdin != nil
	e, err := c.Start(ctx, req)
	if err != nil {
		return ExitStatus{}, err
	}
	defer e.Close()
	if stdin != nil {
		go func() {
			// A write error means the process ended or the stream broke;
			// Wait reports the outcome either way.
			if _, err := io.Copy(e, stdin); err == nil {
				e.CloseStdin()
			}
		}()
	}
	return e.Wait(ctx, stdout, stderr)
}
