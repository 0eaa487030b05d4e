package api

import (
	"bytes"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/thawvm/thaw/internal/errdefs"
)

// ListenUnix listens on the unix socket path, creating its directory
// (0755). A socket file left by a thawd that died is removed; one a live
// thawd still answers on is an ErrUnavailable error, and a path that is not
// a socket is an ErrFailedPrecondition error (it is never removed). The
// socket is made 0660: access to it is access to every sandbox, so it is
// root's and its group's only.
func ListenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating socket directory: %w", err)
	}
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("checking %s: %w", path, err)
	case fi.Mode().Type() != fs.ModeSocket:
		return nil, errdefs.FailedPrecondition("%s exists and is not a socket (%v): move it away or configure another socket path", path, fi.Mode().Type())
	default:
		c, derr := net.DialTimeout("unix", path, time.Second)
		if derr == nil {
			c.Close()
			return nil, errdefs.Unavailable("another thawd is serving on %s", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing stale socket: %w", err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("restricting %s: %w", path, err)
	}
	return l, nil
}

// minToken is the shortest bearer token accepted (bytes).
const minToken = 16

// LoadToken reads the TCP API's bearer token from path: the file's content,
// surrounding whitespace trimmed, at least 16 bytes, in a file only its
// owner can read.
func LoadToken(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, errdefs.Mark(fmt.Errorf("reading token file: %w", err), errdefs.ErrInvalidArgument)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, errdefs.InvalidArgument("token file %s has mode %v: others can read it; chmod 600 it", path, fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading token file: %w", err)
	}
	tok := bytes.TrimSpace(data)
	if len(tok) < minToken {
		return nil, errdefs.InvalidArgument("token file %s holds %d bytes, want at least %d (e.g. openssl rand -hex 32)", path, len(tok), minToken)
	}
	return tok, nil
}

// RequireToken wraps h so that every request must carry
// "Authorization: Bearer <token>"; others get a 401 in the API's error
// format. The comparison takes the same time whatever the guess.
func (s *Server) RequireToken(token []byte, h http.Handler) (http.Handler, error) {
	if len(token) < minToken {
		return nil, errdefs.InvalidArgument("bearer token of %d bytes, want at least %d", len(token), minToken)
	}
	token = bytes.Clone(token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), token) != 1 {
			s.writeError(w, r, errdefs.Unauthenticated("missing or wrong bearer token: send Authorization: Bearer <token from token_file>"))
			return
		}
		h.ServeHTTP(w, r)
	}), nil
}
