package sandbox_test

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/daemon/sandbox"
	"github.com/thawvm/thaw/internal/daemon/sandbox/sandboxtest"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/daemon/template"
)

// TestWorkingSetCheckCatchesAWrongPage proves that the probe's working-set
// check, which the daemon-restart test relies on to call a guest
// uncorrupted, can fail: one page of the template's memory file is
// replaced by its neighbour (as a page served from the wrong offset would
// be), and the restored guest must report exactly that page on its next
// pass, while a sandbox of the intact template reports none.
func TestWorkingSetCheckCatchesAWrongPage(t *testing.T) {
	e := newEnv(t, nil)
	const wsMiB, bad = 4, 300 // 1024 pages; page 300 gets page 301's contents
	s := sandboxtest.ProbeSnapshotWith(t, t.TempDir(), sandboxtest.ProbeConfig{Pages: 1, Spin: 50, WorkingSetMiB: wsMiB})
	register := func(name string) {
		if _, err := template.Register(ctxT(t), e.st, e.lay, template.RegisterRequest{Name: name, VMState: s.VMState, Memory: s.Memory,
			Rootfs: s.Rootfs, Kernel: s.Kernel, VCPUs: s.VCPUs, MemoryMiB: s.MemMiB,
			Ready: store.ReadyCheck{Kind: store.ReadySerial, Marker: sandboxtest.ReadyMarker}}); err != nil {
			t.Fatal(err)
		}
	}
	register("intact")
	// The working set starts at guest address 64 MiB: file offset 64 MiB.
	f, err := os.OpenFile(s.Memory, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	page := make([]byte, 4096)
	if _, err := f.ReadAt(page, 64<<20+(bad+1)*4096); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(page, 64<<20+bad*4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
	register("corrupt")

	for _, tc := range []struct{ template, want string }{
		{"intact", " ok"},
		{"corrupt", " bad=1 first=300"},
	} {
		sb, err := e.m.Create(ctxT(t), sandbox.CreateRequest{ID: tc.template, Template: tc.template})
		if err != nil {
			t.Fatal(err)
		}
		// The first pass line may end a pass the template began before the
		// corruption's page; the second is all the restored guest's.
		var passes []string
		deadline := time.Now().Add(time.Minute)
		for len(passes) < 2 {
			if time.Now().After(deadline) {
				t.Fatalf("sandbox %s: fewer than 2 working-set passes in a minute:\n%s", sb.ID, serialLog(t, sb))
			}
			time.Sleep(50 * time.Millisecond)
			passes = passes[:0]
			for l := range strings.Lines(serialLog(t, sb)) {
				if strings.HasPrefix(l, sandboxtest.WorkingSetPass) {
					passes = append(passes, strings.TrimSpace(l))
				}
			}
		}
		t.Logf("%s: %q", tc.template, passes)
		if !strings.HasSuffix(passes[1], tc.want) {
			t.Errorf("sandbox of the %s template: got %q, want a pass ending %q", tc.template, passes[1], tc.want)
		}
		if err := e.m.Delete(ctxT(t), sb.ID); err != nil {
			t.Fatal(err)
		}
		e.assertGone(t, sb.ID)
	}
}
