package apispec

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const testDoc = `openapi: 3.0.3
info: {title: test, version: "1"}
paths:
  /things/{id}:
    parameters:
      - {name: id, in: path, required: true, schema: {type: string}}
    put:
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Thing"}
      responses:
        "204": {description: stored}
        "400": {$ref: "#/components/responses/Bad"}
    get:
      responses:
        "200":
          description: the thing
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Thing"}
  /things/special:
    get:
      responses:
        "204": {description: nothing}
components:
  responses:
    Bad:
      description: refused
      content:
        application/json:
          schema: {$ref: "#/components/schemas/Error"}
  schemas:
    Thing:
      type: object
      additionalProperties: false
      required: [name]
      properties:
        name: {type: string, minLength: 1}
    Error:
      type: object
      required: [message]
      properties:
        message: {type: string}
`

func load(t *testing.T, doc string) *Spec {
	t.Helper()
	path := filepath.Join(t.TempDir(), "api.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRoutesAndOperations(t *testing.T) {
	s := load(t, testDoc)
	want := []string{"GET /things/special", "GET /things/{id}", "PUT /things/{id}"}
	if got := s.Routes(); !slices.Equal(got, want) {
		t.Errorf("Routes() = %v, want %v", got, want)
	}
	// The literal path wins over the template for GET; PUT only has the template.
	if op := s.Operation("GET", "/things/special"); op == nil || op.Responses.Status(204) == nil {
		t.Error("GET /things/special did not resolve to the literal path")
	}
	if op := s.Operation("PUT", "/things/special"); op == nil || op.RequestBody == nil {
		t.Error("PUT /things/special did not resolve to /things/{id}")
	}
	if op := s.Operation("GET", "/things/a/b"); op != nil {
		t.Error("GET /things/a/b resolved to an operation, want none ({id} is one segment)")
	}
	if op := s.Operation("DELETE", "/things/a"); op != nil {
		t.Error("DELETE /things/a resolved to an operation, want none")
	}
}

func TestCheck(t *testing.T) {
	s := load(t, testDoc)
	s.UnknownStatus, s.UnknownSchema = 400, "Error"
	tests := []struct {
		name    string
		x       Exchange
		wantErr string
	}{
		{"stored", Exchange{"PUT", "/things/a", `{"name":"a"}`, 204, ""}, ""},
		{"refused bad body", Exchange{"PUT", "/things/a", `{"nom":"a"}`, 400, `{"message":"no"}`}, ""},
		{"accepted a body the spec rejects", Exchange{"PUT", "/things/a", `{"nom":"a"}`, 204, ""}, "request schema rejects"},
		{"accepted a non-JSON body", Exchange{"PUT", "/things/a", `nope`, 204, ""}, "not JSON"},
		{"undocumented status", Exchange{"PUT", "/things/a", `{"name":"a"}`, 200, `{"name":"a"}`}, "does not document"},
		{"body where none is documented", Exchange{"PUT", "/things/a", `{"name":"a"}`, 204, "x"}, "documents none"},
		{"answer the schema rejects", Exchange{"GET", "/things/a", "", 200, `{"name":""}`}, "schema rejects"},
		{"answer not JSON", Exchange{"GET", "/things/a", "", 200, `{`}, "not JSON"},
		{"good answer", Exchange{"GET", "/things/a", "", 200, `{"name":"a"}`}, ""},
		{"unknown route refused", Exchange{"DELETE", "/things/a", "", 400, `{"message":"no such route"}`}, ""},
		{"unknown route with a bad error body", Exchange{"DELETE", "/things/a", "", 400, `{"msg":"x"}`}, "schema rejects"},
		{"unknown route answered", Exchange{"POST", "/other", "", 200, ""}, "not in the spec"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Check(tt.x)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Check(%+v) = %v, want nil", tt.x, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Check(%+v) = %v, want an error containing %q", tt.x, err, tt.wantErr)
			}
		})
	}
}

func TestHandler(t *testing.T) {
	s := load(t, testDoc)
	var reported []error
	h := s.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if string(b) != `{"name":"a"}` {
			t.Errorf("the wrapped handler read %q, want the original body", b)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(200) // the spec documents 204 for PUT
		io.WriteString(w, `{"name":"a"}`)
	}), func(err error) { reported = append(reported, err) })
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("PUT", "/things/a", strings.NewReader(`{"name":"a"}`)))
	if w.Code != 200 || w.Body.String() != `{"name":"a"}` || w.Header().Get("Content-Type") != "application/json" {
		t.Errorf("answer passed through as %d %q %v, want 200 with the body and header", w.Code, w.Body, w.Header())
	}
	if len(reported) != 1 || !strings.Contains(reported[0].Error(), "answered 200, which the spec does not document") {
		t.Errorf("reported %v, want one undocumented-status error", reported)
	}
}

func TestLoadErrors(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file: %v, want ErrNotExist", err)
	}
	bad := strings.Replace(testDoc, "$ref: \"#/components/schemas/Thing\"}", "$ref: \"#/components/schemas/Nope\"}", 1)
	path := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(path, []byte(bad), 0o644)
	if _, err := Load(path); err == nil {
		t.Error("Load of a document with a dangling $ref succeeded, want an error")
	}
}
