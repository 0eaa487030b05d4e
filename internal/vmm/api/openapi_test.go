package api

import (
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/thawvm/thaw/internal/apispec"
	"github.com/thawvm/thaw/internal/fcapi"
)

const specPath = "../../../api/firecracker.yaml"

var (
	specOnce sync.Once
	spec     *apispec.Spec
	specErr  error
)

// loadSpec loads and validates api/firecracker.yaml once. Routes it does not
// list are answered as Firecracker does: 400 with an Error.
func loadSpec(t testing.TB) *apispec.Spec {
	t.Helper()
	specOnce.Do(func() {
		spec, specErr = apispec.Load(specPath)
		if specErr == nil {
			spec.UnknownStatus, spec.UnknownSchema = http.StatusBadRequest, "Error"
		}
	})
	if specErr != nil {
		t.Fatal(specErr)
	}
	return spec
}

// checkAgainstSpec checks one exchange with the server against the spec.
func checkAgainstSpec(t *testing.T, method, path, reqBody string, status int, respBody string) {
	t.Helper()
	if err := loadSpec(t).Check(apispec.Exchange{Method: method, Path: path, RequestBody: reqBody, Status: status, ResponseBody: respBody}); err != nil {
		t.Error(err)
	}
}

// TestSpecMatchesRoutes checks that the spec describes exactly the routes
// the server registers.
func TestSpecMatchesRoutes(t *testing.T) {
	inSpec := loadSpec(t).Routes()
	var served []string
	for _, r := range Routes() {
		served = append(served, r.Method+" "+r.Path)
	}
	sort.Strings(served)
	if !slices.Equal(inSpec, served) {
		t.Errorf("routes in %s:\n  %s\nroutes the server registers:\n  %s", specPath,
			strings.Join(inSpec, "\n  "), strings.Join(served, "\n  "))
	}
}

// TestSpecMatchesTypes checks that each body schema has exactly the JSON
// fields of its fcapi type plus the Firecracker fields it accepts only when
// they ask for nothing, with the same required ones, so the spec and the
// wire types cannot drift apart.
func TestSpecMatchesTypes(t *testing.T) {
	doc := loadSpec(t).Doc
	types := map[string]any{
		"Error":                fcapi.Error{},
		"InstanceInfo":         fcapi.InstanceInfo{},
		"FirecrackerVersion":   fcapi.Version{},
		"MachineConfiguration": fcapi.MachineConfig{},
		"BootSource":           fcapi.BootSource{},
		"Drive":                fcapi.Drive{},
		"PartialDrive":         fcapi.PartialDrive{},
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
		if _, ok := types[name]; !ok && !strings.HasPrefix(name, "NotImplemented") {
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
		goProps = append(goProps, fcapi.NotImplemented(v)...)
		sort.Strings(goProps)
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
	doc := loadSpec(t).Doc
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
