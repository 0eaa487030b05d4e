package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/thawapi"
)

// maxBody bounds request bodies; the API's bodies are small JSON documents
// (uploads stream through their own routes).
const maxBody = 1 << 20

// writeError answers with err's status and a thawapi.ErrorBody. It is the only
// place a handler's error becomes a status.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status := errdefs.HTTPStatus(err)
	body := thawapi.ErrorBody{Error: err.Error()}
	if k := errdefs.KindOf(err); k != nil {
		body.Kind = k.Error()
	}
	if status >= 500 {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	} else {
		s.log.Debug("request refused", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	}
	if errdefs.IsUnauthenticated(err) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="thawd"`)
	}
	writeJSON(w, status, body)
}

// writeJSON answers with status and v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		// Only a programming error (an unencodable type) gets here.
		status = http.StatusInternalServerError
		data, _ = json.Marshal(thawapi.ErrorBody{Error: fmt.Sprintf("encoding response: %v", err)})
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(data, '\n'))
}

// decodeBody decodes the request body strictly into v: JSON only, at most
// maxBody bytes, no unknown fields, exactly one value. Every failure is an
// invalid-argument error saying what was wrong.
func decodeBody(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return errdefs.InvalidArgument("request body: content type %q, want application/json", ct)
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return errdefs.InvalidArgument("reading request body: %w", err)
	}
	if len(data) > maxBody {
		return errdefs.InvalidArgument("request body is larger than %d bytes", maxBody)
	}
	return decodeJSON(data, v)
}

// decodeJSON is decodeBody's parser, separate so it can be fuzzed.
func decodeJSON(data []byte, v any) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return errdefs.InvalidArgument("request body is empty, want a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			return errdefs.InvalidArgument("request body: field %q: want %v, got JSON %s", typeErr.Field, typeErr.Type, typeErr.Value)
		}
		return errdefs.InvalidArgument("request body: %v", err)
	}
	if dec.More() {
		return errdefs.InvalidArgument("request body: more than one JSON value")
	}
	return nil
}

// notRouted explains a request no route matched. A known path with another
// method is a 404 too (there is no 405 kind), naming the methods it takes.
func notRouted(r *http.Request) error {
	var allowed []string
	for _, rt := range routes {
		if pathMatches(rt.path, r.URL.Path) && !slices.Contains(allowed, rt.method) {
			allowed = append(allowed, rt.method)
		}
	}
	if len(allowed) > 0 {
		return errdefs.NotFound("no API route %s %s (allowed: %s)", r.Method, r.URL.Path, strings.Join(allowed, ", "))
	}
	return errdefs.NotFound("no API route %s %s (see api/thawd.openapi.json)", r.Method, r.URL.Path)
}

// pathMatches reports whether path fits pattern, whose {x} segments match
// any one segment.
func pathMatches(pattern, path string) bool {
	ps, qs := strings.Split(pattern, "/"), strings.Split(path, "/")
	if len(ps) != len(qs) {
		return false
	}
	for i := range ps {
		if !(strings.HasPrefix(ps[i], "{") && qs[i] != "") && ps[i] != qs[i] {
			return false
		}
	}
	return true
}
