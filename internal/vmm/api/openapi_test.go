package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/thawvm/thaw/internal/fcapi"
)

const specPath = "../../../api/firecracker.yaml"

var (
	specOnce sync.Once
	spec     *openapi3.T
	specErr  error
)

// loadSpec loads and validates api/firecracker.yaml once.
func loadSpec(t *testing.T) *openapi3.T {
	t.Helper()
	specOnce.Do(func() {
		loader := openapi3.NewLoader()
		spec, specErr = loader.LoadFromFile(specPath)
		if specErr == nil {
			specErr = spec.Validate(context.Background())
		}
	})
	if specErr != nil {
		t.Fatalf("loading %s: %v", specPath, specErr)
	}
	return spec
}

// operationFor finds the operation documented for method and a concrete
// path, and the template it matched; op is nil for an undocumented route.
func operationFor(doc *openapi3.T, method, path string) (template string, op *openapi3.Operation) {
	for tmpl, item := range doc.Paths.Map() {
		re := "^" + regexp.MustCompile(`\\\{[^}]+\\\}`).ReplaceAllString(regexp.QuoteMeta(tmpl), `[^/]+`) + "$"
		if regexp.MustCompile(re).MatchString(path) {
			if op := item.GetOperation(method); op != nil {
				return tmpl, op
			}
		}
	}
	return "", nil
}

func schemaOf(content openapi3.Content) *openapi3.Schema {
	mt := content.Get("application/json")
	if mt == nil || mt.Schema == nil {
		return nil
	}
	return mt.Schema.Value
}

// checkAgainstSpec checks one exchange with the server against the spec:
// the answer's status is documented for the route and its body matches the
// documented schema (an Error for undocumented routes); a request the
// server accepted matches the documented request schema.
func checkAgainstSpec(t *testing.T, method, path, reqBody string, status int, respBody string) {
	t.Helper()
	doc := loadSpec(t)
	_, op := operationFor(doc, method, path)
	var schema *openapi3.Schema
	switch {
	case op == nil:
		if status != http.StatusBadRequest {
			t.Errorf("%s %s is not in the spec but was answered %d, want 400", method, path, status)
			return
		}
		schema = doc.Components.Schemas["Error"].Value
	default:
		ref := op.Responses.Status(status)
		if ref == nil {
			t.Errorf("%s %s answered %d, which the spec does not document for it", method, path, status)
			return
		}
		if ref.Value.Content != nil {
			schema = schemaOf(ref.Value.Content)
		}
		if status/100 == 2 && op.RequestBody != nil {
			var v any
			if err := json.Unmarshal([]byte(reqBody), &v); err != nil {
				t.Errorf("%s %s accepted a body that is not JSON: %q", method, path, reqBody)
			} else if err := schemaOf(op.RequestBody.Value.Content).VisitJSON(v); err != nil {
				t.Errorf("%s %s accepted %s, which the spec's request schema rejects: %v", method, path, reqBody, err)
			}
		}
	}
	if schema == nil {
		if respBody != "" {
			t.Errorf("%s %s answered %d with body %q; the spec documents none", method, path, status, respBody)
		}
		return
	}
	var v any
	if err := json.Unmarshal([]byte(respBody), &v); err != nil {
		t.Errorf("%s %s answered %d with a body that is not JSON: %q", method, path, status, respBody)
		return
	}
	if err := schema.VisitJSON(v); err != nil {
		t.Errorf("%s %s answered %d with %s, which the spec's schema rejects: %v", method, path, status, respBody, err)
	}
}

// TestSpecMatchesRoutes checks that the spec describes exactly the routes
// the server registers.
func TestSpecMatchesRoutes(t *testing.T) {
	doc := loadSpec(t)
	var inSpec []string
	for tmpl, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			inSpec = append(inSpec, method+" "+tmpl)
		}
	}
	var served []string
	for _, r := range Routes() {
		served = append(served, r.Method+" "+r.Path)
	}
	sort.Strings(inSpec)
	sort.Strings(served)
	if !slices.Equal(inSpec, served) {
		t.Errorf("routes in %s:\n  %s\nroutes the server registers:\n  %s", specPath,
			strings.Join(inSpec, "\n  "), strings.Join(served, "\n  "))
	}
}

// TestSpecMatchesTypes checks that each body schema has exactly the JSON
// fields of its fcapi type, with the same required ones, so the spec and
// the wire types cannot drift apart.
func TestSpecMatchesTypes(t *testing.T) {
	doc := loadSpec(t)
	types := map[string]any{
		"Error":                fcapi.Error{},
		"InstanceInfo":         fcapi.InstanceInfo{},
		"FirecrackerVersion":   fcapi.Version{},
		"MachineConfiguration": fcapi.MachineConfig{},
		"BootSource":           fcapi.BootSource{},
		"Drive":                fcapi.Drive{},
		"Vsock":                fcapi.Vsock{},
		"NetworkInterface":     fcapi.NetworkInterface{},
		"InstanceActionInfo":   fcapi.InstanceActionInfo{},
		"Vm":                   fcapi.VM{},
		"SnapshotCreateParams": fcapi.SnapshotCreateParams{},
		"MemoryBackend":        fcapi.MemBackend{},
		"NetworkOverride":      fcapi.NetworkOverride{},
		"VsockOverride":        fcapi.VsockOverride{},
		"SnapshotLoadParams":   fcapi.SnapshotLoadParams{},
		"FullVmConfiguration":  fcapi.VMConfig{},
	}
	for name := range doc.Components.Schemas {
		if _, ok := types[name]; !ok {
			t.Errorf("schema %s has no fcapi type in this test", name)
		}
	}
	for name, v := range types {
		ref := doc.Components.Schemas[name]
		if ref == nil {
			t.Errorf("%T has no schema %s in the spec", v, name)
			continue
		}
		s := ref.Value
		var props, required []string
		for p := range s.Properties {
			props = append(props, p)
		}
		required = append(required, s.Required...)
		goProps, goRequired := jsonFields(reflect.TypeOf(v))
		sort.Strings(props)
		sort.Strings(required)
		if !slices.Equal(props, goProps) {
			t.Errorf("schema %s has properties %v, %T has JSON fields %v", name, props, v, goProps)
		}
		if !slices.Equal(required, goRequired) {
			t.Errorf("schema %s requires %v, %T requires %v", name, required, v, goRequired)
		}
		if s.AdditionalProperties.Has == nil || *s.AdditionalProperties.Has {
			t.Errorf("schema %s allows additional properties; the server rejects unknown fields", name)
		}
	}
}

func jsonFields(t reflect.Type) (names, required []string) {
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		names = append(names, name)
		if f.Tag.Get("fc") == "required" {
			required = append(required, name)
		}
	}
	sort.Strings(names)
	sort.Strings(required)
	return names, required
}

// TestSpecEnums checks the enums the spec lists against the values fcapi
// accepts.
func TestSpecEnums(t *testing.T) {
	doc := loadSpec(t)
	tests := []struct {
		schema, prop string
		want         []any
	}{
		{"InstanceInfo", "state", []any{string(fcapi.StateNotStarted), string(fcapi.StateRunning), string(fcapi.StatePaused)}},
		{"MachineConfiguration", "huge_pages", []any{string(fcapi.HugePagesNone), string(fcapi.HugePagesTransparent), string(fcapi.HugePages2M)}},
		{"Drive", "cache_type", []any{string(fcapi.CacheUnsafe), string(fcapi.CacheWriteback)}},
		{"InstanceActionInfo", "action_type", []any{string(fcapi.ActionFlushMetrics), string(fcapi.ActionInstanceStart), string(fcapi.ActionSendCtrlAltDel)}},
		{"Vm", "state", []any{string(fcapi.VMPaused), string(fcapi.VMResumed)}},
		{"SnapshotCreateParams", "snapshot_type", []any{string(fcapi.SnapshotFull), string(fcapi.SnapshotDiff)}},
		{"MemoryBackend", "backend_type", []any{string(fcapi.MemBackendFile), string(fcapi.MemBackendUffd)}},
	}
	for _, tt := range tests {
		got := doc.Components.Schemas[tt.schema].Value.Properties[tt.prop].Value.Enum
		if fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("%s.%s enum = %v, want %v", tt.schema, tt.prop, got, tt.want)
		}
	}
}
