// Package apispec checks HTTP exchanges against an OpenAPI 3 document, for
// tests of the HTTP APIs Thaw serves (thaw-vmm's Firecracker API, thawd's
// own): that the document lists exactly the routes a server registers, and
// that each request a server accepted and each answer it gave match the
// documented status codes and schemas. It wraps kin-openapi.
package apispec

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strings"

	"github.com/getkin/kin-openapi/openapi3"
)

// Spec is a loaded and validated OpenAPI 3 document.
type Spec struct {
	Doc *openapi3.T
	// UnknownStatus and UnknownSchema say how the server answers a route
	// the document does not list (Firecracker: 400 with an Error body).
	UnknownStatus int
	UnknownSchema string

	paths []pathMatcher // concrete path → template, literal templates first
}

type pathMatcher struct {
	template string
	re       *regexp.Regexp
	item     *openapi3.PathItem
}

var paramRE = regexp.MustCompile(`\\\{[^}]+\\\}`)

// Load reads, parses and validates the document at path. Unknown routes
// are expected to be answered 404 with no schema until the caller sets
// UnknownStatus and UnknownSchema.
func Load(path string) (*Spec, error) {
	doc, err := openapi3.NewLoader().LoadFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", path, err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("validating %s: %w", path, err)
	}
	s := &Spec{Doc: doc, UnknownStatus: http.StatusNotFound}
	for tmpl, item := range doc.Paths.Map() {
		re := "^" + paramRE.ReplaceAllString(regexp.QuoteMeta(tmpl), `[^/]+`) + "$"
		s.paths = append(s.paths, pathMatcher{template: tmpl, re: regexp.MustCompile(re), item: item})
	}
	sort.Slice(s.paths, func(i, j int) bool {
		ci, cj := strings.Count(s.paths[i].template, "{"), strings.Count(s.paths[j].template, "{")
		if ci != cj {
			return ci < cj
		}
		return s.paths[i].template < s.paths[j].template
	})
	return s, nil
}

// Routes returns "METHOD /template" for every operation in the document,
// sorted.
func (s *Spec) Routes() []string {
	var out []string
	for _, p := range s.paths {
		for method := range p.item.Operations() {
			out = append(out, method+" "+p.template)
		}
	}
	sort.Strings(out)
	return out
}

// Operation returns the operation documented for method on a concrete
// path, or nil.
func (s *Spec) Operation(method, path string) *openapi3.Operation {
	for _, p := range s.paths {
		if p.re.MatchString(path) {
			if op := p.item.GetOperation(method); op != nil {
				return op
			}
		}
	}
	return nil
}

// Schema returns the named component schema, or nil.
func (s *Spec) Schema(name string) *openapi3.Schema {
	ref := s.Doc.Components.Schemas[name]
	if ref == nil {
		return nil
	}
	return ref.Value
}

func jsonSchema(content openapi3.Content) *openapi3.Schema {
	mt := content.Get("application/json")
	if mt == nil || mt.Schema == nil {
		return nil
	}
	return mt.Schema.Value
}

// Exchange is one request and the server's answer; an empty body is "".
type Exchange struct {
	Method       string
	Path         string
	RequestBody  string
	Status       int
	ResponseBody string
}

// Check checks x against the document: the status is documented for the
// operation (or, for a route the document does not list, is UnknownStatus
// with an UnknownSchema body); a 2xx answer means the request body matched
// the documented request schema; the answer's body matches the documented
// schema, or is empty when none is documented.
func (s *Spec) Check(x Exchange) error {
	op := s.Operation(x.Method, x.Path)
	var schema *openapi3.Schema
	anyBody := false
	if op == nil {
		if x.Status != s.UnknownStatus {
			return fmt.Errorf("%s %s is not in the spec but was answered %d, want %d", x.Method, x.Path, x.Status, s.UnknownStatus)
		}
		if s.UnknownSchema != "" {
			if schema = s.Schema(s.UnknownSchema); schema == nil {
				return fmt.Errorf("the spec has no %s schema", s.UnknownSchema)
			}
		}
	} else {
		ref := op.Responses.Status(x.Status)
		if ref == nil {
			return fmt.Errorf("%s %s answered %d, which the spec does not document for it", x.Method, x.Path, x.Status)
		}
		if ref.Value.Content != nil {
			schema = jsonSchema(ref.Value.Content)
			// A documented non-JSON answer (text, a file's bytes):
			// any body is the document's.
			anyBody = schema == nil && len(ref.Value.Content) > 0
		}
		if x.Status/100 == 2 && op.RequestBody != nil {
			var v any
			if err := json.Unmarshal([]byte(x.RequestBody), &v); err != nil {
				return fmt.Errorf("%s %s accepted a body that is not JSON: %q", x.Method, x.Path, x.RequestBody)
			}
			if err := jsonSchema(op.RequestBody.Value.Content).VisitJSON(v); err != nil {
				return fmt.Errorf("%s %s accepted %s, which the spec's request schema rejects: %w", x.Method, x.Path, x.RequestBody, err)
			}
		}
	}
	if anyBody {
		return nil
	}
	if schema == nil {
		if x.ResponseBody != "" {
			return fmt.Errorf("%s %s answered %d with body %q; the spec documents none", x.Method, x.Path, x.Status, x.ResponseBody)
		}
		return nil
	}
	var v any
	if err := json.Unmarshal([]byte(x.ResponseBody), &v); err != nil {
		return fmt.Errorf("%s %s answered %d with a body that is not JSON: %q", x.Method, x.Path, x.Status, x.ResponseBody)
	}
	if err := schema.VisitJSON(v); err != nil {
		return fmt.Errorf("%s %s answered %d with %s, which the spec's schema rejects: %w", x.Method, x.Path, x.Status, x.ResponseBody, err)
	}
	return nil
}

// Handler wraps h so that every exchange through it is checked; report
// receives each mismatch (typically t.Error). The answer is buffered, so
// do not use it for streaming endpoints.
func (s *Spec) Handler(h http.Handler, report func(error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			report(fmt.Errorf("%s %s: reading the request: %w", r.Method, r.URL.Path, err))
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		if err := s.Check(Exchange{r.Method, r.URL.Path, string(body), rec.Code, rec.Body.String()}); err != nil {
			report(err)
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes())
	})
}
