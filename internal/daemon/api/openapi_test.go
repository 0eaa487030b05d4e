package api

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/apispec"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/shim"
	"github.com/thawvm/thaw/internal/thawapi"
	"github.com/thawvm/thaw/internal/uffd"
)

const openAPIPath = "../../../api/thawd.openapi.json"

// loadSpec loads api/thawd.openapi.json with the project's OpenAPI checker:
// a route the document lacks must be answered 404 with an Error body.
func loadSpec(t *testing.T) *apispec.Spec {
	t.Helper()
	spec, err := apispec.Load(openAPIPath)
	if err != nil {
		t.Fatal(err)
	}
	spec.UnknownSchema = "Error"
	return spec
}

// TestRoutesMatchOpenAPI: every route is documented and every documented
// operation is routed.
func TestRoutesMatchOpenAPI(t *testing.T) {
	var routed []string
	for _, rt := range routes {
		routed = append(routed, rt.method+" "+rt.path)
	}
	slices.Sort(routed)
	if documented := loadSpec(t).Routes(); !slices.Equal(documented, routed) {
		t.Errorf("routes and %s differ:\nrouted     %q\ndocumented %q", openAPIPath, routed, documented)
	}
}

// TestEveryGETMatchesItsSchema requests every JSON GET route through the
// fixture, whose handler checks each exchange against the document (see
// newFixture); the other tests' exchanges are checked the same way.
func TestEveryGETMatchesItsSchema(t *testing.T) {
	f := newFixture(t)
	params := strings.NewReplacer("{name}", "py", "{id}", "sb1")
	for _, rt := range routes {
		// /metrics is Prometheus text and /files streams a guest file
		// (it needs a running sandbox with an agent); build runs exist
		// only once started (TestBuildRoutes).
		if rt.method != "GET" || rt.path == "/metrics" || strings.HasSuffix(rt.path, "/files") || strings.Contains(rt.path, "/builds/") {
			continue
		}
		if status, body := f.do(t, "GET", params.Replace(rt.path), "", nil); status != 200 {
			t.Errorf("GET %s: status %d: %s", rt.path, status, body)
		}
	}
}

// TestSpecIsStrict proves the document can catch drift: an answer with a
// missing, an extra or a mistyped property, or a request body the server
// should have refused, is rejected.
func TestSpecIsStrict(t *testing.T) {
	spec := loadSpec(t)
	for _, x := range []apispec.Exchange{
		{Method: "GET", Path: "/v1/version", Status: 200, ResponseBody: `{"version":"1"}`},
		{Method: "GET", Path: "/v1/version", Status: 200, ResponseBody: `{"version":"1","api":"v1","extra":true}`},
		{Method: "GET", Path: "/v1/sandboxes/sb1", Status: 200, ResponseBody: `{"id":1}`},
		{Method: "PATCH", Path: "/v1/settings", RequestBody: `{"ufd":true}`, Status: 200,
			ResponseBody: `{"uffd":true,"restore_slots":{"limit":1,"in_use":0,"waiting":0}}`},
		{Method: "GET", Path: "/v1/sandboxes/sb1", Status: 418, ResponseBody: `{"error":"x"}`},
	} {
		if err := spec.Check(x); err == nil {
			t.Errorf("the document accepts %+v", x)
		}
	}
}

// TestPagesMatchSchema: inspect's page-server part, as pagesOut makes it
// from a shim's stats, matches the document, which refuses an unknown
// prefetch mode; the wire constants are the shim's.
func TestPagesMatchSchema(t *testing.T) {
	spec := loadSpec(t)
	for _, mode := range []string{shim.PrefetchOrdered, shim.PrefetchFileOrder, shim.PrefetchOff} {
		sb := sandboxOut(store.Sandbox{ID: "sb1", Template: "py", Build: "b1", State: store.Running, UFFD: true})
		sb.Pages = pagesOut(shim.PageStats{Serving: true, Prefetch: mode, OrderPages: 1357,
			Stats: uffd.Stats{Faults: 60, FaultPages: 57, PrefetchedPages: 1300, PrefetchDone: true, PrefetchTime: 80 * time.Millisecond,
				PrefetchRate: 200 << 20, PrefetchWait: 30 * time.Millisecond}})
		body, err := json.Marshal(sb)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(body), `"prefetch_rate":209715200,"prefetch_wait_ms":30`) {
			t.Errorf("prefetch %s: no prefetch rate and wait in %s", mode, body)
		}
		x := apispec.Exchange{Method: "GET", Path: "/v1/sandboxes/sb1", Status: 200, ResponseBody: string(body)}
		if err := spec.Check(x); err != nil {
			t.Errorf("prefetch %s: %v\n%s", mode, err, body)
		}
		x.ResponseBody = strings.Replace(x.ResponseBody, `"prefetch":"`+mode+`"`, `"prefetch":"sorted"`, 1)
		if err := spec.Check(x); err == nil {
			t.Errorf("the document accepts prefetch mode \"sorted\": %s", x.ResponseBody)
		}
	}
	if shim.PrefetchOrdered != thawapi.PrefetchOrdered || shim.PrefetchFileOrder != thawapi.PrefetchFileOrder || shim.PrefetchOff != thawapi.PrefetchOff {
		t.Error("the shim's and the API's prefetch modes differ")
	}
}
