package nested

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	harness "github.com/thawvm/thaw/internal/nested"
	"github.com/thawvm/thaw/internal/testenv"
)

// TestGuestKernel checks the cached guest kernel: an x86-64 ELF with a PVH
// entry note, built from a config that has every line of the fragment. An
// empty cache skips, except under THAW_REQUIRE_KVM=1 (CI), where the test
// builds the kernel itself (several minutes, once per config).
func TestGuestKernel(t *testing.T) {
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	path, cached, err := harness.GuestKernelPath(t.Context(), root)
	if err != nil {
		t.Fatal(err)
	}
	if !cached {
		strict, err := testenv.Strict()
		if err != nil {
			t.Fatal(err)
		}
		if !strict {
			t.Skipf("guest kernel not built yet (%s): run guest/kernel/build (about 7 minutes)", path)
		}
		t.Logf("building the guest kernel into %s (%s=1 forbids skipping)", path, testenv.StrictEnv)
		if path, err = harness.BuildGuestKernel(t.Context(), root, os.Stderr); err != nil {
			t.Fatal(err)
		}
	}
	entry, err := harness.PVHEntry(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: PVH entry %#x", path, entry)
	if entry < 0x100000 {
		t.Errorf("PVH entry %#x, want a physical address above 1 MiB", entry)
	}

	built, err := os.ReadFile(filepath.Join(filepath.Dir(path), "config"))
	if err != nil {
		t.Fatal(err)
	}
	fragment, err := os.Open(filepath.Join(root, "guest/kernel/config"))
	if err != nil {
		t.Fatal(err)
	}
	defer fragment.Close()
	lines := strings.Split(string(built), "\n")
	notSet := regexp.MustCompile(`^# (CONFIG_\w+) is not set$`)
	sc := bufio.NewScanner(fragment)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "CONFIG_"):
			if !slices.Contains(lines, line) {
				t.Errorf("built config lacks %q", line)
			}
		case notSet.MatchString(line):
			opt := notSet.FindStringSubmatch(line)[1]
			for _, l := range lines {
				if strings.HasPrefix(l, opt+"=") {
					t.Errorf("built config has %q, want %q", l, line)
				}
			}
		}
	}
}
