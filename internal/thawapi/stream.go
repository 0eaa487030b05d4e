package thawapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/thawvm/thaw/internal/errdefs"
)

// send sends a request with a streamed body and returns the 2xx response
// (the caller closes its body) or the error its status maps to.
func (c *Client) send(ctx context.Context, method, path, contentType string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s %s: %w", method, path, ctx.Err())
		}
		return nil, errdefs.Unavailable("%s %s: thawd is not reachable at %s (is it running?): %w", method, path, c.where, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		var eb ErrorBody
		msg := fmt.Sprintf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(data)))
		if json.Unmarshal(data, &eb) == nil && eb.Error != "" {
			msg = eb.Error
		}
		return nil, errdefs.FromHTTP(resp.StatusCode, msg)
	}
	return resp, nil
}

// Exec runs a process in sandbox id: stdin (if not nil) is streamed to it,
// its output is copied to stdout and stderr as it arrives, and its exit
// status is returned. A failure after the process started comes back as an
// error of its kind.
func (c *Client) Exec(ctx context.Context, id string, req ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (ExitStatus, error) {
	req.Stdin = stdin != nil
	head, err := json.Marshal(req)
	if err != nil {
		return ExitStatus{}, fmt.Errorf("encoding the exec request: %w", err)
	}
	body := io.Reader(strings.NewReader(string(head) + "\n"))
	if stdin != nil {
		body = io.MultiReader(body, stdin)
	}
	resp, err := c.send(ctx, "POST", "/v1/sandboxes/"+url.PathEscape(id)+"/exec", "application/json", body)
	if err != nil {
		return ExitStatus{}, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var ev ExecEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return ExitStatus{}, fmt.Errorf("decoding an exec event: %w", err)
		}
		switch {
		case ev.Exit != nil:
			return *ev.Exit, nil
		case ev.Error != "":
			return ExitStatus{}, errdefs.FromKindName(ev.Kind, ev.Error)
		}
		if len(ev.Stdout) > 0 {
			if _, err := stdout.Write(ev.Stdout); err != nil {
				return ExitStatus{}, fmt.Errorf("writing stdout: %w", err)
			}
		}
		if len(ev.Stderr) > 0 {
			if _, err := stderr.Write(ev.Stderr); err != nil {
				return ExitStatus{}, fmt.Errorf("writing stderr: %w", err)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return ExitStatus{}, fmt.Errorf("reading the exec stream: %w", err)
	}
	return ExitStatus{}, errors.New("the exec stream ended without an exit status")
}

// Upload streams r into the file at path in sandbox id (mode 0: 0644).
func (c *Client) Upload(ctx context.Context, id, path string, r io.Reader, mode uint32, mkdirs bool) (FileInfo, error) {
	q := url.Values{"path": {path}}
	if mode != 0 {
		q.Set("mode", strconv.FormatUint(uint64(mode), 8))
	}
	if mkdirs {
		q.Set("mkdirs", "true")
	}
	resp, err := c.send(ctx, "PUT", "/v1/sandboxes/"+url.PathEscape(id)+"/files?"+q.Encode(), "application/octet-stream", r)
	if err != nil {
		return FileInfo{}, err
	}
	defer resp.Body.Close()
	var fi FileInfo
	if err := json.NewDecoder(resp.Body).Decode(&fi); err != nil {
		return FileInfo{}, fmt.Errorf("decoding the upload answer: %w", err)
	}
	return fi, nil
}

// Download streams the file at path out of sandbox id; the caller closes it.
func (c *Client) Download(ctx context.Context, id, path string) (io.ReadCloser, error) {
	resp, err := c.send(ctx, "GET", "/v1/sandboxes/"+url.PathEscape(id)+"/files?"+url.Values{"path": {path}}.Encode(), "", nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}
