package api

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
)

const openAPIPath = "../../../api/thawd.openapi.json"

type openAPI struct {
	Paths      map[string]map[string]json.RawMessage `json:"paths"`
	Components struct {
		Schemas map[string]*schema `json:"schemas"`
	} `json:"components"`
}

// schema is the subset of JSON Schema the document uses.
type schema struct {
	Ref                  string             `json:"$ref"`
	Type                 string             `json:"type"`
	Required             []string           `json:"required"`
	Properties           map[string]*schema `json:"properties"`
	AdditionalProperties *bool              `json:"additionalProperties"`
	Items                *schema            `json:"items"`
	Enum                 []any              `json:"enum"`
	Minimum              *float64           `json:"minimum"`
}

type operation struct {
	Responses map[string]struct {
		Ref     string `json:"$ref"`
		Content map[string]struct {
			Schema *schema `json:"schema"`
		} `json:"content"`
	} `json:"responses"`
}

func loadOpenAPI(t *testing.T) *openAPI {
	t.Helper()
	data, err := os.ReadFile(openAPIPath)
	if err != nil {
		t.Fatal(err)
	}
	var doc openAPI
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("%s: %v", openAPIPath, err)
	}
	return &doc
}

// TestRoutesMatchOpenAPI: every route is documented and every documented
// operation is routed.
func TestRoutesMatchOpenAPI(t *testing.T) {
	doc := loadOpenAPI(t)
	var documented, routed []string
	for path, item := range doc.Paths {
		for method := range item {
			if method == "parameters" {
				continue
			}
			documented = append(documented, strings.ToUpper(method)+" "+path)
		}
	}
	for _, rt := range routes {
		routed = append(routed, rt.method+" "+rt.path)
	}
	slices.Sort(documented)
	slices.Sort(routed)
	if !slices.Equal(documented, routed) {
		t.Errorf("routes and %s differ:\nrouted     %q\ndocumented %q", openAPIPath, routed, documented)
	}
}

// TestResponsesMatchSchemas: what each GET answers conforms to its
// documented 200 schema, and error bodies to the Error schema.
func TestResponsesMatchSchemas(t *testing.T) {
	doc := loadOpenAPI(t)
	f := newFixture(t)
	params := map[string]string{"{name}": "py", "{id}": "sb1"}
	for _, rt := range routes {
		if rt.method != "GET" {
			continue
		}
		path := rt.path
		for k, v := range params {
			path = strings.ReplaceAll(path, k, v)
		}
		var op operation
		if err := json.Unmarshal(doc.Paths[rt.path][strings.ToLower(rt.method)], &op); err != nil {
			t.Fatal(err)
		}
		if _, ok := op.Responses["200"].Content["text/plain"]; ok {
			continue // not JSON (metrics); served and checked by its own package
		}
		s := op.Responses["200"].Content["application/json"].Schema
		if s == nil {
			t.Errorf("%s %s: no documented 200 schema", rt.method, rt.path)
			continue
		}
		status, body := f.do(t, rt.method, path, "", nil)
		if status != 200 {
			t.Errorf("%s %s: status %d: %s", rt.method, path, status, body)
			continue
		}
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			t.Fatal(err)
		}
		for _, err := range check(doc, s, v, rt.path) {
			t.Errorf("%s %s: %v", rt.method, path, err)
		}
	}
	_, body := f.do(t, "GET", "/v1/sandboxes/nope", "", nil)
	var v any
	json.Unmarshal(body, &v)
	for _, err := range check(doc, &schema{Ref: "#/components/schemas/Error"}, v, "error") {
		t.Errorf("error body: %v", err)
	}
}

// check validates v against s and returns every violation, each naming
// where it is.
func check(doc *openAPI, s *schema, v any, at string) []error {
	if s.Ref != "" {
		name := strings.TrimPrefix(s.Ref, "#/components/schemas/")
		ref, ok := doc.Components.Schemas[name]
		if !ok {
			return []error{fmt.Errorf("%s: dangling $ref %s", at, s.Ref)}
		}
		return check(doc, ref, v, at)
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(at+": "+format, args...)) }
	if len(s.Enum) > 0 && !slices.Contains(s.Enum, v) {
		bad("%v is not one of %v", v, s.Enum)
	}
	switch s.Type {
	case "object":
		obj, ok := v.(map[string]any)
		if !ok {
			bad("got %T, want an object", v)
			return errs
		}
		for _, r := range s.Required {
			if _, ok := obj[r]; !ok {
				bad("required property %q missing", r)
			}
		}
		for k, pv := range obj {
			ps, ok := s.Properties[k]
			if !ok {
				if s.AdditionalProperties != nil && !*s.AdditionalProperties {
					bad("undocumented property %q", k)
				}
				continue
			}
			errs = append(errs, check(doc, ps, pv, at+"."+k)...)
		}
	case "array":
		arr, ok := v.([]any)
		if !ok {
			bad("got %T, want an array", v)
			return errs
		}
		for i, e := range arr {
			errs = append(errs, check(doc, s.Items, e, fmt.Sprintf("%s[%d]", at, i))...)
		}
	case "string":
		if _, ok := v.(string); !ok {
			bad("got %T, want a string", v)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			bad("got %T, want a boolean", v)
		}
	case "integer", "number":
		n, ok := v.(float64)
		if !ok {
			bad("got %T, want a number", v)
			break
		}
		if s.Type == "integer" && n != float64(int64(n)) {
			bad("%v is not an integer", n)
		}
		if s.Minimum != nil && n < *s.Minimum {
			bad("%v is below the minimum %v", n, *s.Minimum)
		}
	}
	return errs
}

// TestSchemaCheckerCatchesDrift proves the checker can fail: a response
// with a missing, an extra and a mistyped property is rejected.
func TestSchemaCheckerCatchesDrift(t *testing.T) {
	doc := loadOpenAPI(t)
	v := map[string]any{"version": 1.0, "extra": true}
	errs := check(doc, &schema{Ref: "#/components/schemas/Version"}, v, "version")
	got := fmt.Sprint(errs)
	for _, want := range []string{`required property "api" missing`, `undocumented property "extra"`, "version.version: got float64, want a string"} {
		if !strings.Contains(got, want) {
			t.Errorf("checker errors %s lack %q", got, want)
		}
	}
}
