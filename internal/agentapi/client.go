package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Dialer opens a new stream to the agent: a unix socket in tests, or
// DialVsockUDS in production.
type Dialer func(ctx context.Context) (net.Conn, error)

// maxErrorBody caps how much of an error response the client reads.
const maxErrorBody = 64 << 10

// Client speaks the agent protocol over streams from a Dialer. It is safe for
// concurrent use and keeps idle connections for reuse; Close drops them.
type Client struct {
	dial Dialer
	hc   *http.Client
	tr   *http.Transport
}

// NewClient returns a Client that reaches the agent through dial.
func NewClient(dial Dialer) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dial(ctx)
		},
		DisableCompression:  true,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}
	return &Client{dial: dial, tr: tr, hc: &http.Client{Transport: tr}}
}

// UnixDialer returns a Dialer for an agent listening on a unix socket.
func UnixDialer(path string) Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
}

// VsockDialer returns a Dialer for an agent on guest port port behind a
// Firecracker-style host-side vsock socket at udsPath.
func VsockDialer(udsPath string, port uint32) Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		return DialVsockUDS(ctx, udsPath, port)
	}
}

// Close drops idle connections. Streams already handed out (Exec, Download)
// stay open until their owners close them. After a snapshot restore every
// connection to the guest is dead (the VMM resets them); call Close, or use a
// new Client, before talking to the restored agent.
func (c *Client) Close() error {
	c.tr.CloseIdleConnections()
	return nil
}

// baseURL is a placeholder host: the Dialer decides where requests go.
const baseURL = "http://agent"

// Health returns the agent's health.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	return h, c.do(ctx, http.MethodGet, "/health", nil, nil, &h)
}

// WaitReady polls Health until the agent answers or ctx ends, dropping idle
// connections first (after a restore they are dead). Use it after booting or
// restoring a VM, before Init.
func (c *Client) WaitReady(ctx context.Context, interval time.Duration) (Health, error) {
	c.tr.CloseIdleConnections()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		h, err := c.Health(ctx)
		if err == nil {
			return h, nil
		}
		select {
		case <-ctx.Done():
			return Health{}, fmt.Errorf("waiting for the agent: %w (last error: %v)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

// Init sends the post-restore initialisation.
func (c *Client) Init(ctx context.Context, req InitRequest) (Health, error) {
	var h Health
	return h, c.do(ctx, http.MethodPost, "/init", nil, req, &h)
}

// Processes lists the processes the agent started that are running or
// ended recently.
func (c *Client) Processes(ctx context.Context) ([]ProcessInfo, error) {
	var ps []ProcessInfo
	return ps, c.do(ctx, http.MethodGet, "/processes", nil, nil, &ps)
}

// Signal sends sig (a name or number) to the process group of the process
// the agent started as id.
func (c *Client) Signal(ctx context.Context, id, sig string) error {
	return c.do(ctx, http.MethodPost, "/processes/"+url.PathEscape(id)+"/signal", nil, SignalRequest{Signal: sig}, nil)
}

// Shutdown asks the agent to stop all processes and power off or reboot the
// guest. The agent answers before it starts shutting down.
func (c *Client) Shutdown(ctx context.Context, req ShutdownRequest) error {
	return c.do(ctx, http.MethodPost, "/shutdown", nil, req, nil)
}

// Stat describes the file at path without following a final symlink.
func (c *Client) Stat(ctx context.Context, path string) (FileInfo, error) {
	var fi FileInfo
	return fi, c.do(ctx, http.MethodGet, "/files/stat", url.Values{"path": {path}}, nil, &fi)
}

// List describes the entries of the directory at path, sorted by name.
func (c *Client) List(ctx context.Context, path string) ([]FileInfo, error) {
	var fis []FileInfo
	return fis, c.do(ctx, http.MethodGet, "/files/list", url.Values{"path": {path}}, nil, &fis)
}

// Mkdir creates a directory.
func (c *Client) Mkdir(ctx context.Context, req MkdirRequest) (FileInfo, error) {
	var fi FileInfo
	return fi, c.do(ctx, http.MethodPost, "/files/mkdir", nil, req, &fi)
}

// Remove removes a file or directory.
func (c *Client) Remove(ctx context.Context, req RemoveRequest) error {
	return c.do(ctx, http.MethodPost, "/files/remove", nil, req, nil)
}

// Rename renames from to to.
func (c *Client) Rename(ctx context.Context, from, to string) error {
	return c.do(ctx, http.MethodPost, "/files/rename", nil, RenameRequest{From: from, To: to}, nil)
}

// UploadOptions tunes Upload.
type UploadOptions struct {
	// Mode is the new file's permission bits; 0 means 0644.
	Mode uint32
	// User owns the file; default InitRequest.User.
	User string
	// Mkdirs creates missing parent directories.
	Mkdirs bool
}

// Upload streams r into the file at path, replacing it atomically once
// everything arrived: a failed upload leaves no partial file behind.
func (c *Client) Upload(ctx context.Context, path string, r io.Reader, opts UploadOptions) (FileInfo, error) {
	q := url.Values{"path": {path}}
	if opts.Mode != 0 {
		q.Set("mode", strconv.FormatUint(uint64(opts.Mode), 8))
	}
	if opts.User != "" {
		q.Set("user", opts.User)
	}
	if opts.Mkdirs {
		q.Set("mkdirs", "true")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, baseURL+"/files/content?"+q.Encode(), r)
	if err != nil {
		return FileInfo{}, fmt.Errorf("building upload request: %w", err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	var fi FileInfo
	return fi, c.roundTrip(req, &fi)
}

// Download streams the file at path. The caller closes the reader; Size is
// the file's size when the agent opened it.
func (c *Client) Download(ctx context.Context, path string) (rc io.ReadCloser, size int64, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+"/files/content?"+url.Values{"path": {path}}.Encode(), nil)
	if err != nil {
		return nil, 0, fmt.Errorf("building download request: %w", err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("GET /files/content: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, 0, responseError(resp)
	}
	return resp.Body, resp.ContentLength, nil
}

// do sends a JSON request (body may be nil) and decodes a JSON answer into out
// (which may be nil).
func (c *Client) do(ctx context.Context, method, path string, q url.Values, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encoding %s %s: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	u := baseURL + path
	if q != nil {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return fmt.Errorf("building %s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.roundTrip(req, out)
}

func (c *Client) roundTrip(req *http.Request, out any) error {
	what := req.Method + " " + req.URL.Path
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s: %w", what, responseError(resp))
	}
	if out == nil {
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s: decoding answer: %w", what, err)
	}
	return nil
}

// responseError turns a non-2xx response into an *Error.
func responseError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var e Error
	if json.Unmarshal(b, &e) == nil && e.Kind != "" {
		return &e
	}
	return Errorf(kindForStatus(resp.StatusCode), "agent answered %s: %q", resp.Status, bytes.TrimSpace(b))
}
