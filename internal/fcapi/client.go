package fcapi

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
	"time"
)

// maxResponseSize bounds what the client reads from a VMM.
const maxResponseSize = 1 << 20

// Client talks to one VMM's API socket: thaw-vmm or a real firecracker.
// Methods take the context first; it bounds the whole request. A Client is
// safe for concurrent use (the VMM serialises requests anyway).
type Client struct {
	socketPath string
	hc         *http.Client
}

// NewClient returns a client for the API socket at socketPath. It does not
// connect; see WaitReady.
func NewClient(socketPath string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		MaxIdleConns:        1,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     30 * time.Second,
	}
	return &Client{socketPath: socketPath, hc: &http.Client{Transport: tr}}
}

// SocketPath returns the socket the client talks to.
func (c *Client) SocketPath() string { return c.socketPath }

// Close drops the client's idle connection.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// APIError is a non-2xx answer from the VMM: its status and fault_message.
type APIError struct {
	Method       string
	Path         string
	StatusCode   int
	FaultMessage string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.Path, e.StatusCode, http.StatusText(e.StatusCode), e.FaultMessage)
}

// do sends one request; in (when not nil) is the JSON body, out (when not
// nil) receives a 200 answer's body.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: encoding the body: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s on %s: %w", method, path, c.socketPath, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseSize))
	if err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &APIError{Method: method, Path: path, StatusCode: resp.StatusCode, FaultMessage: faultMessage(data)}
	}
	if out == nil {
		return nil
	}
	// Answers are decoded leniently: a newer firecracker may add fields.
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decoding the answer %q: %w", method, path, truncate(data), err)
	}
	return nil
}

// faultMessage extracts fault_message from an error body, or returns the
// body itself when it is something else (micro_http answers an oversized
// request with {"error": ...}).
func faultMessage(data []byte) string {
	var e Error
	if json.Unmarshal(data, &e) == nil && e.FaultMessage != "" {
		return e.FaultMessage
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return "(no body)"
	}
	return truncate(data)
}

func truncate(data []byte) string {
	const max = 512
	s := strings.TrimSpace(string(data))
	if len(s) > max {
		s = s[:max] + "..."
	}
	return s
}

// put validates body (so a bad request fails here, naming the field, rather
// than in the VMM) and sends it.
func (c *Client) put(ctx context.Context, method, path string, body Validator) error {
	if err := body.Validate(); err != nil {
		return fmt.Errorf("%s %s: invalid request: %w", method, path, err)
	}
	return c.do(ctx, method, path, body, nil)
}

// InstanceInfo calls GET /.
func (c *Client) InstanceInfo(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	err := c.do(ctx, http.MethodGet, "/", nil, &info)
	return info, err
}

// Version calls GET /version.
func (c *Client) Version(ctx context.Context) (Version, error) {
	var v Version
	err := c.do(ctx, http.MethodGet, "/version", nil, &v)
	return v, err
}

// MachineConfig calls GET /machine-config.
func (c *Client) MachineConfig(ctx context.Context) (MachineConfig, error) {
	var m MachineConfig
	err := c.do(ctx, http.MethodGet, "/machine-config", nil, &m)
	return m, err
}

// PutBootSource calls PUT /boot-source (pre-boot only).
func (c *Client) PutBootSource(ctx context.Context, b BootSource) error {
	return c.put(ctx, http.MethodPut, "/boot-source", b)
}

// PutMachineConfig calls PUT /machine-config (pre-boot only).
func (c *Client) PutMachineConfig(ctx context.Context, m MachineConfig) error {
	return c.put(ctx, http.MethodPut, "/machine-config", m)
}

// PutDrive calls PUT /drives/{drive_id} (pre-boot only).
func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	return c.put(ctx, http.MethodPut, "/drives/"+url.PathEscape(d.DriveID), d)
}

// PatchDrive calls PATCH /drives/{drive_id} (post-boot only).
func (c *Client) PatchDrive(ctx context.Context, d PartialDrive) error {
	return c.put(ctx, http.MethodPatch, "/drives/"+url.PathEscape(d.DriveID), d)
}

// PutVsock calls PUT /vsock (pre-boot only).
func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	return c.put(ctx, http.MethodPut, "/vsock", v)
}

// PutNetworkInterface calls PUT /network-interfaces/{iface_id} (pre-boot
// only). thaw-vmm does not implement networking yet and answers 400.
func (c *Client) PutNetworkInterface(ctx context.Context, n NetworkInterface) error {
	return c.put(ctx, http.MethodPut, "/network-interfaces/"+url.PathEscape(n.IfaceID), n)
}

// Action calls PUT /actions.
func (c *Client) Action(ctx context.Context, t ActionType) error {
	return c.put(ctx, http.MethodPut, "/actions", InstanceActionInfo{ActionType: t})
}

// InstanceStart boots the configured VM.
func (c *Client) InstanceStart(ctx context.Context) error {
	return c.Action(ctx, ActionInstanceStart)
}

// SendCtrlAltDel asks the guest to reboot (the VMM then exits).
func (c *Client) SendCtrlAltDel(ctx context.Context) error {
	return c.Action(ctx, ActionSendCtrlAltDel)
}

// PatchVM calls PATCH /vm.
func (c *Client) PatchVM(ctx context.Context, s VMState) error {
	return c.put(ctx, http.MethodPatch, "/vm", VM{State: s})
}

// Pause pauses a running VM.
func (c *Client) Pause(ctx context.Context) error { return c.PatchVM(ctx, VMPaused) }

// Resume resumes a paused VM.
func (c *Client) Resume(ctx context.Context) error { return c.PatchVM(ctx, VMResumed) }

// CreateSnapshot calls PUT /snapshot/create on a paused VM.
func (c *Client) CreateSnapshot(ctx context.Context, p SnapshotCreateParams) error {
	return c.put(ctx, http.MethodPut, "/snapshot/create", p)
}

// LoadSnapshot calls PUT /snapshot/load on a fresh VMM process. If it fails,
// the VMM process exits (Firecracker's behaviour); the caller should reap it.
func (c *Client) LoadSnapshot(ctx context.Context, p SnapshotLoadParams) error {
	return c.put(ctx, http.MethodPut, "/snapshot/load", p)
}

// WaitReady polls GET / until the VMM answers it successfully or ctx ends.
// It is for the moments after starting a VMM process, when the socket may
// not exist yet or not be listening.
func (c *Client) WaitReady(ctx context.Context) error {
	const maxDelay = 20 * time.Millisecond
	delay := time.Millisecond
	for {
		_, err := c.InstanceInfo(ctx)
		if err == nil {
			return nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("waiting for the VMM API on %s: %w (last error: %v)", c.socketPath, context.Cause(ctx), err)
		case <-t.C:
		}
		delay = min(2*delay, maxDelay)
	}
}
