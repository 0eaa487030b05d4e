package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/thawvm/thaw/internal/agentapi"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/errdefs"
)

// agent returns a client for the agent of running sandbox id, reached
// through the host side of its vsock device (<dir>/vsock.sock,
// Firecracker's CONNECT protocol). The caller closes it.
func (m *Manager) agent(id string) (*agentapi.Client, error) {
	if err := store.ValidateID("sandbox id", id); err != nil {
		return nil, err
	}
	sb, err := m.opts.Store.Sandbox(id)
	if err != nil {
		return nil, err
	}
	if sb.State != store.Running {
		return nil, errdefs.FailedPrecondition("sandbox %q is %s: exec and files need a running sandbox", id, sb.State)
	}
	sock := filepath.Join(sb.Dir, VsockName)
	if _, err := os.Stat(sock); err != nil {
		return nil, errdefs.FailedPrecondition("sandbox %q has no agent (its template's ready check is not the agent, or its VMM has no vsock device): %v", id, err)
	}
	return agentapi.NewClient(agentapi.VsockDialer(sock, agentapi.DefaultVsockPort)), nil
}

// agentErr gives an agent's error a kind thawd's API maps.
func agentErr(err error) error {
	if err == nil {
		return nil
	}
	switch agentapi.KindOf(err) {
	case agentapi.KindInvalid:
		return errdefs.Mark(err, errdefs.ErrInvalidArgument)
	case agentapi.KindNotFound:
		return errdefs.Mark(err, errdefs.ErrNotFound)
	case agentapi.KindExists:
		return errdefs.Mark(err, errdefs.ErrAlreadyExists)
	case agentapi.KindPermission, agentapi.KindPrecondition:
		return errdefs.Mark(err, errdefs.ErrFailedPrecondition)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return errdefs.Mark(err, errdefs.ErrDeadlineExceeded)
	}
	return errdefs.Mark(fmt.Errorf("agent: %w", err), errdefs.ErrUnavailable)
}

// Exec runs a process in sandbox id through its agent, streaming stdin (if
// not nil) in and stdout and stderr out as they are produced, and returns
// its exit status.
func (m *Manager) Exec(ctx context.Context, id string, req agentapi.ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (agentapi.ExitStatus, error) {
	if err := req.Validate(); err != nil {
		return agentapi.ExitStatus{}, errdefs.Mark(err, errdefs.ErrInvalidArgument)
	}
	ac, err := m.agent(id)
	if err != nil {
		return agentapi.ExitStatus{}, err
	}
	defer ac.Close()
	st, err := ac.Exec(ctx, req, stdin, stdout, stderr)
	return st, agentErr(err)
}

// Upload streams r into the file at path in sandbox id.
func (m *Manager) Upload(ctx context.Context, id, path string, r io.Reader, opts agentapi.UploadOptions) (agentapi.FileInfo, error) {
	if err := agentapi.CheckPath(path); err != nil {
		return agentapi.FileInfo{}, errdefs.Mark(err, errdefs.ErrInvalidArgument)
	}
	ac, err := m.agent(id)
	if err != nil {
		return agentapi.FileInfo{}, err
	}
	defer ac.Close()
	fi, err := ac.Upload(ctx, path, r, opts)
	return fi, agentErr(err)
}

// Download streams the file at path out of sandbox id. The caller closes
// the reader.
func (m *Manager) Download(ctx context.Context, id, path string) (io.ReadCloser, int64, error) {
	if err := agentapi.CheckPath(path); err != nil {
		return nil, 0, errdefs.Mark(err, errdefs.ErrInvalidArgument)
	}
	ac, err := m.agent(id)
	if err != nil {
		return nil, 0, err
	}
	rc, size, err := ac.Download(ctx, path)
	if err != nil {
		ac.Close()
		return nil, 0, agentErr(err)
	}
	return &closeBoth{ReadCloser: rc, c: ac}, size, nil
}

type closeBoth struct {
	io.ReadCloser
	c *agentapi.Client
}

func (c *closeBoth) Close() error { return errors.Join(c.ReadCloser.Close(), c.c.Close()) }
