package nested

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	harness "github.com/thawvm/thaw/internal/nested"
)

// TestKVMWhereLinuxGuestsRun proves /dev/kvm is a working KVM where the
// harness runs Linux guests: L1 under QEMU here, the host itself on
// hardware KVM.
func TestKVMWhereLinuxGuestsRun(t *testing.T) {
	dir := t.TempDir()
	run := `#!/bin/sh
set -e
test -c /dev/kvm
if [ -n "$THAW_NESTED" ]; then
	dmesg | grep 'SVM: kvm: Nested Paging enabled'
fi
ls -l /dev/kvm > "$THAW_RESULTS/kvm.txt"
echo kvm-ok
`
	if err := os.WriteFile(filepath.Join(dir, "run"), []byte(run), 0o755); err != nil {
		t.Fatal(err)
	}
	r := harness.Test(t, harness.Payload{Dir: dir})
	if r.ExitCode != 0 || !strings.Contains(string(r.Output), "kvm-ok") {
		t.Fatalf("payload exited %d, want 0 and kvm-ok; output:\n%s", r.ExitCode, r.Output)
	}
	got, err := os.ReadFile(filepath.Join(r.Files, "kvm.txt"))
	if err != nil || !strings.Contains(string(got), "/dev/kvm") {
		t.Errorf("result file kvm.txt = %q, %v; want the ls -l line of /dev/kvm", got, err)
	}
}
