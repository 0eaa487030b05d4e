package nested

import (
	"regexp"
	"strings"
	"testing"

	harness "github.com/thawvm/thaw/internal/nested"
)

// TestKVMWhereLinuxGuestsRun proves /dev/kvm is a working KVM where Linux
// guests run (L1 under QEMU here, the host itself on hardware KVM) with our
// own code: internal/vmm/kvm's tests, which create a VM, run hand-assembled
// guest code to HLT in real and long mode and round-trip vCPU state, run
// there with THAW_REQUIRE_KVM=1, so a skip would be a failure.
func TestKVMWhereLinuxGuestsRun(t *testing.T) {
	p := harness.GoTestPayload(t, "github.com/thawvm/thaw/internal/vmm/kvm")
	r := harness.Test(t, p)
	out := string(r.Output)
	t.Logf("internal/vmm/kvm tests (nested: %v):\n%s", r.Nested, out)
	if r.ExitCode != 0 {
		t.Fatalf("internal/vmm/kvm tests exited %d, want 0; output:\n%s", r.ExitCode, out)
	}
	for _, want := range []string{"--- PASS: TestRunToHLT", "--- PASS: TestStateRoundTrip"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if skip := regexp.MustCompile(`--- SKIP: \S+`).FindString(out); skip != "" {
		t.Errorf("a KVM test skipped (%s):\n%s", skip, out)
	}
}
