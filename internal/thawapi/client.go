package thawapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/thawvm/thaw/internal/errdefs"
)

// Client talks to thawd. Its methods are safe for concurrent use.
type Client struct {
	base  string // scheme and host; paths are appended
	where string // the socket or address, for messages
	token string
	hc    *http.Client
}

// NewUnix returns a client for thawd's unix socket.
func NewUnix(socket string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	return &Client{base: "http://thawd", where: socket, hc: &http.Client{Transport: tr}}
}

// NewTCP returns a client for thawd's TCP listener at addr (host:port),
// sending token as the bearer token.
func NewTCP(addr, token string) *Client {
	return &Client{base: "http://" + addr, where: addr, token: token, hc: &http.Client{Transport: &http.Transport{}}}
}

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// maxErrorBody bounds how much of an error response is read.
const maxErrorBody = 64 << 10

// do sends a request with in (if not nil) as its JSON body and decodes a
// 2xx answer into out. A non-2xx answer becomes an error of the kind its
// status maps to, with the server's message.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encoding %s %s request: %w", method, path, err)
		}
		body = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s %s: %w", method, path, ctx.Err())
		}
		return errdefs.Unavailable("%s %s: thawd is not reachable at %s (is it running?): %w", method, path, c.where, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		var eb ErrorBody
		msg := ""
		if json.Unmarshal(data, &eb) == nil && eb.Error != "" {
			msg = eb.Error
		} else {
			msg = fmt.Sprintf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(data)))
		}
		return errdefs.FromHTTP(resp.StatusCode, msg)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decoding %s %s answer: %w", method, path, err)
	}
	return nil
}

// Version returns thawd's version.
func (c *Client) Version(ctx context.Context) (Version, error) {
	var v Version
	return v, c.do(ctx, "GET", "/v1/version", nil, &v)
}

// Settings returns the run-time settings.
func (c *Client) Settings(ctx context.Context) (Settings, error) {
	var s Settings
	return s, c.do(ctx, "GET", "/v1/settings", nil, &s)
}

// PatchSettings changes the run-time settings p sets and returns the result.
func (c *Client) PatchSettings(ctx context.Context, p SettingsPatch) (Settings, error) {
	var s Settings
	return s, c.do(ctx, "PATCH", "/v1/settings", p, &s)
}

// Templates returns every template.
func (c *Client) Templates(ctx context.Context) ([]Template, error) {
	var ts []Template
	return ts, c.do(ctx, "GET", "/v1/templates", nil, &ts)
}

// Template returns the template called name.
func (c *Client) Template(ctx context.Context, name string) (Template, error) {
	var t Template
	return t, c.do(ctx, "GET", "/v1/templates/"+url.PathEscape(name), nil, &t)
}

// DeleteTemplate deletes the template called name and its builds' files.
// It is refused while sandboxes use it, unless force, which deletes them
// first.
func (c *Client) DeleteTemplate(ctx context.Context, name string, force bool) error {
	path := "/v1/templates/" + url.PathEscape(name)
	if force {
		path += "?force=true"
	}
	return c.do(ctx, "DELETE", path, nil, nil)
}

// Sandboxes returns every sandbox.
func (c *Client) Sandboxes(ctx context.Context) ([]Sandbox, error) {
	var sbs []Sandbox
	return sbs, c.do(ctx, "GET", "/v1/sandboxes", nil, &sbs)
}

// Sandbox returns the sandbox with the given id.
func (c *Client) Sandbox(ctx context.Context, id string) (Sandbox, error) {
	var sb Sandbox
	return sb, c.do(ctx, "GET", "/v1/sandboxes/"+url.PathEscape(id), nil, &sb)
}

// RegisterTemplate registers an existing snapshot as a new build of the
// template called name (creating the template if needed).
func (c *Client) RegisterTemplate(ctx context.Context, name string, r RegisterTemplate) (Template, error) {
	var t Template
	return t, c.do(ctx, "PUT", "/v1/templates/"+url.PathEscape(name), r, &t)
}

// CreateSandbox restores a new sandbox and returns it once it is ready.
func (c *Client) CreateSandbox(ctx context.Context, r CreateSandbox) (Sandbox, error) {
	var sb Sandbox
	return sb, c.do(ctx, "POST", "/v1/sandboxes", r, &sb)
}

// DeleteSandbox stops and removes the sandbox with the given id.
func (c *Client) DeleteSandbox(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/v1/sandboxes/"+url.PathEscape(id), nil, nil)
}

// PauseSandbox snapshots a running sandbox to disk and stops its VM.
func (c *Client) PauseSandbox(ctx context.Context, id string) (Sandbox, error) {
	var sb Sandbox
	return sb, c.do(ctx, "POST", "/v1/sandboxes/"+url.PathEscape(id)+"/pause", nil, &sb)
}

// ResumeSandbox restores a paused sandbox in place.
func (c *Client) ResumeSandbox(ctx context.Context, id string) (Sandbox, error) {
	var sb Sandbox
	return sb, c.do(ctx, "POST", "/v1/sandboxes/"+url.PathEscape(id)+"/resume", nil, &sb)
}
