package shim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// ErrUnavailable means nothing answers on the control socket: the shim is
// gone (or not up yet). thawd maps it to its "unavailable" kind.
var ErrUnavailable = errors.New("shim not answering")

// maxAnswer bounds what the client reads from a shim.
const maxAnswer = 1 << 20

// Client speaks a shim's control API. Blocking calls (Ready, Handshake,
// Settle with wait, Stop, Wait) wait as long as ctx allows. A Client is
// safe for concurrent use.
type Client struct {
	socketPath string
	hc         *http.Client
}

// NewClient returns a client for the control socket at socketPath. It
// does not connect.
func NewClient(socketPath string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     30 * time.Second,
	}
	return &Client{socketPath: socketPath, hc: &http.Client{Transport: tr}}
}

// SocketPath returns the control socket's path.
func (c *Client) SocketPath() string { return c.socketPath }

// Close drops idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// APIError is an error answer from the shim.
type APIError struct {
	Method, Path string
	StatusCode   int
	Message      string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("shim %s %s: %d %s: %s", e.Method, e.Path, e.StatusCode, http.StatusText(e.StatusCode), e.Message)
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("shim %s %s: encoding the body: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://shim"+path, body)
	if err != nil {
		return fmt.Errorf("shim %s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return fmt.Errorf("shim %s %s on %s: %w: %w", method, path, c.socketPath, ErrUnavailable, err)
		}
		return fmt.Errorf("shim %s %s on %s: %w", method, path, c.socketPath, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return fmt.Errorf("shim %s %s: reading the answer: %w", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e errorBody
		msg := string(bytes.TrimSpace(data))
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return &APIError{Method: method, Path: path, StatusCode: resp.StatusCode, Message: msg}
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("shim %s %s: decoding the answer: %w", method, path, err)
	}
	return nil
}

// Info returns the shim's identity.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var v Info
	return v, c.do(ctx, http.MethodGet, "/info", nil, &v)
}

// Status returns the current status at once.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var v Status
	return v, c.do(ctx, http.MethodGet, "/status", nil, &v)
}

// Ready waits until the VMM's API answers or the VM is over, and returns
// the status: state running, or vmm-exited / failed with the reason.
func (c *Client) Ready(ctx context.Context) (Status, error) {
	var v Status
	return v, c.do(ctx, http.MethodGet, "/ready", nil, &v)
}

// Handshake waits for the UFFD handshake's verdict (see Verdict.Err). A
// snapshot load that succeeded with a failed verdict is a failed restore.
func (c *Client) Handshake(ctx context.Context) (Verdict, error) {
	var v Verdict
	return v, c.do(ctx, http.MethodGet, "/handshake", nil, &v)
}

// Stats returns the page server's counters.
func (c *Client) Stats(ctx context.Context) (PageStats, error) {
	var v PageStats
	return v, c.do(ctx, http.MethodGet, "/stats", nil, &v)
}

// Settle returns a recording run's progress; with wait it blocks until
// the recording has settled or the VMM is gone.
func (c *Client) Settle(ctx context.Context, wait bool) (SettleStatus, error) {
	var v SettleStatus
	return v, c.do(ctx, http.MethodGet, fmt.Sprintf("/settle?wait=%t", wait), nil, &v)
}

// Stop sends the VMM SIGTERM, then SIGKILL after grace (0: the shim's
// default), and returns the final status once the VMM is gone.
func (c *Client) Stop(ctx context.Context, grace time.Duration) (Status, error) {
	var v Status
	return v, c.do(ctx, http.MethodPost, "/stop", StopRequest{GraceMS: graceMS(grace)}, &v)
}

// Wait blocks until the VMM is gone and returns the final status.
func (c *Client) Wait(ctx context.Context) (Status, error) {
	var v Status
	return v, c.do(ctx, http.MethodGet, "/wait", nil, &v)
}

// Collect acknowledges the final status: the shim answers with it, then
// removes its sockets and status file and exits. It is refused (409)
// while the VMM runs.
func (c *Client) Collect(ctx context.Context) (Status, error) {
	var v Status
	return v, c.do(ctx, http.MethodPost, "/collect", nil, &v)
}
