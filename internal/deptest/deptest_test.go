package deptest

import (
	"bytes"
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/thawvm/thaw"

type pkg struct {
	ImportPath string
	Name       string
	Doc        string
	Deps       []string
	Module     *struct{ Path string }
}

// rule forbids packages matching from to depend on internal packages that
// deny reports as forbidden.
type rule struct {
	from string // import path prefix, relative to the module
	why  string
	deny func(dep string) bool
}

func under(prefixes ...string) func(string) bool {
	return func(dep string) bool {
		for _, p := range prefixes {
			if dep == p || strings.HasPrefix(dep, p+"/") {
				return true
			}
		}
		return false
	}
}

func except(allowed ...string) func(string) bool {
	return func(dep string) bool {
		for _, a := range allowed {
			if dep == a {
				return false
			}
		}
		return true
	}
}

// rules mirrors the import table in docs/ARCHITECTURE.md.
var rules = []rule{
	{"internal/abi", "ABI packages hold constants and structs only", except()},
	{"internal/errdefs", "error kinds are a leaf every layer may use", except()},
	{"internal/thawapi", "the API's wire types and client stay light for the CLI",
		except("internal/errdefs")},
	{"internal/uffd", "the page server knows nothing of VMMs, shims or the daemon",
		under("internal/vmm", "internal/daemon", "internal/shim", "internal/agent")},
	{"internal/daemon", "the daemon reaches a VMM only through internal/fcapi",
		under("internal/vmm", "internal/abi/kvm", "internal/abi/virtio")},
	{"internal/agent", "the agent imports only its protocol package",
		except("internal/agentapi")},
	{"cmd/thaw-agent", "the agent binary imports only the agent and its protocol",
		except("internal/agent", "internal/agentapi")},
	{"internal/shim", "the shim drives a VMM through internal/fcapi, and the builtin one through the shim.Builtin that cmd/thaw-shim injects: never by importing it",
		under("internal/vmm", "internal/daemon", "internal/agent")},
	{"internal/vmm", "the VMM (internal/vmm/process included) knows nothing of the shim, the daemon or the agent",
		under("internal/shim", "internal/daemon", "internal/agent")},
	{"internal/image", "image building needs no other Thaw package", except()},
	{"internal/fcapi", "the Firecracker API types must not depend on either side",
		under("internal/vmm", "internal/daemon", "internal/shim")},
	{"internal/nested", "the nested harness is test infrastructure that runs payloads; it knows no Thaw component",
		except("internal/testenv", "internal/conf")},
}

func listModule(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps=false", "-json", module+"/...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.Bytes())
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("decoding go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) == 0 {
		t.Fatal("go list found no packages")
	}
	return pkgs
}

func rel(path string) string { return strings.TrimPrefix(strings.TrimPrefix(path, module), "/") }

func TestImportRules(t *testing.T) {
	checked := 0
	for _, p := range listModule(t) {
		from := rel(p.ImportPath)
		for _, r := range rules {
			if !under(r.from)(from) {
				continue
			}
			checked++
			for _, d := range p.Deps {
				if !strings.HasPrefix(d, module+"/") {
					continue
				}
				dep := rel(d)
				if under(r.from)(dep) {
					continue // a package may use its own subpackages
				}
				if r.deny(dep) {
					t.Errorf("%s imports %s: %s (docs/ARCHITECTURE.md)", from, dep, r.why)
				}
			}
		}
	}
	t.Logf("checked %d package/rule pairs", checked)
}

func TestEveryPackageHasDoc(t *testing.T) {
	for _, p := range listModule(t) {
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("%s has no package doc comment", p.ImportPath)
			continue
		}
		want := "Package " + p.Name + " "
		if p.Name == "main" {
			want = "" // commands describe themselves in their own words
		}
		if !strings.HasPrefix(p.Doc, want) {
			t.Errorf("%s: doc comment starts %q, want it to start %q", p.ImportPath, firstLine(p.Doc), want)
		}
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
