package daemon

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/daemon/disk/disktest"
	"github.com/thawvm/thaw/internal/daemon/proc"
	"github.com/thawvm/thaw/internal/daemon/sandbox/sandboxtest"
	"github.com/thawvm/thaw/internal/shim"
	"github.com/thawvm/thaw/internal/testenv"
	"github.com/thawvm/thaw/internal/thawapi"
)

func TestMain(m *testing.M) {
	code := m.Run()
	sandboxtest.Cleanup()
	os.Exit(code)
}

// thawdProc is a thawd binary running as its own process.
type thawdProc struct {
	cmd  *exec.Cmd
	logs *testenv.Buffer

	once sync.Once
}

// stop sends sig to thawd and waits for it to exit; later calls do nothing.
func (p *thawdProc) stop(sig syscall.Signal) {
	p.once.Do(func() {
		p.cmd.Process.Signal(sig)
		p.cmd.Wait()
	})
}

func startThawd(t *testing.T, bins, data, sock string, flags ...string) *thawdProc {
	t.Helper()
	p := &thawdProc{logs: &testenv.Buffer{}}
	args := append([]string{"-config", "/dev/null", "-data-dir", data, "-socket", sock,
		"-shim", filepath.Join(bins, "thaw-shim"), "-reconcile-interval", "1h"}, flags...) // the default VMM: builtin
	p.cmd = exec.Command(filepath.Join(bins, "thawd"), args...)
	p.cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.stop(syscall.SIGKILL) })
	c := thawapi.NewUnix(sock)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Version(ctx)
		cancel()
		if err == nil {
			return p
		}
		if time.Now().After(deadline) {
			p.stop(syscall.SIGKILL)
			t.Fatalf("thawd never answered on %s: %v\n%s", sock, err, p.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ticks counts the probe's ticks in a sandbox's serial log.
func ticks(t *testing.T, data, id string) int {
	b, err := os.ReadFile(filepath.Join(data, "sandboxes", id, "vmm.log"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), sandboxtest.ReadyMarker)
}

// tickSums returns the distinct pattern checksums ("sum=<hex>") of the
// probe's tick lines in a sandbox's serial log.
func tickSums(t *testing.T, data, id string) []string {
	b, err := os.ReadFile(filepath.Join(data, "sandboxes", id, "vmm.log"))
	if err != nil {
		t.Fatal(err)
	}
	var sums []string
	for l := range strings.Lines(string(b)) {
		_, sum, ok := strings.Cut(strings.TrimSpace(l), " sum=")
		if strings.HasPrefix(l, sandboxtest.ReadyMarker) && ok && !slices.Contains(sums, sum) {
			sums = append(sums, sum)
		}
	}
	return sums
}

// envInt reads a positive integer test knob, or returns def.
func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// wsPasses returns the probe's working-set pass lines in a sandbox's serial
// log.
func wsPasses(t *testing.T, data, id string) []string {
	b, err := os.ReadFile(filepath.Join(data, "sandboxes", id, "vmm.log"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for l := range strings.Lines(string(b)) {
		if strings.HasPrefix(l, sandboxtest.WorkingSetPass) {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	return lines
}

// TestRestartReattaches is issue 7's daemon-restart test on this machine's
// probe guests, with prefetch still running at the kill: the probe template
// owns a working set of THAW_TEST_RESTART_WS_MIB MiB (default 128) that it
// re-verifies continuously, so its recorded access log holds all of it.
// The test creates THAW_TEST_RESTART_N sandboxes (default 4) at once
// through a thawd process whose prefetch rate limit (uffd_prefetch_rate)
// makes the working set take restartPrefetchSpan to prefetch, and kills
// thawd with SIGKILL as soon as the creates return; right after the kill
// it reads every shim's counters and fails unless at least one shim is
// still prefetching then, and if any prefetched more than the limit
// allows. A new thawd, started without a limit, must reattach every
// sandbox (same shim, still under the limit it was created with); each
// must finish its prefetch, keep ticking (none frozen) and complete full
// passes over its working set with every page correct (none corrupted);
// deleting them through the new thawd leaves no process, directory,
// socket or record.
//
// The limit, not the machine's speed, keeps the prefetcher busy past the
// kill: it cannot copy the working set in less than restartPrefetchSpan,
// far longer than the creates take. The limit does not pace the guest,
// and a probe that faulted in its whole working set (32 768 pages for
// 128 MiB) before the kill would leave its prefetcher nothing to do. But
// the test needs only one shim still prefetching, and the sandbox whose
// create returned last has run for milliseconds by the kill: too few for
// 32 768 fault round trips on any machine. The test logs how much of its
// working set the busiest guest had faulted in by the kill, the margin
// left (61 % for the first of 20 here; docs/benchmarks/thawd.md).
//
// After the restart the limit stays (it is the shim's own setting). That
// keeps completion bounded by restartPrefetchSpan and in practice costs
// the test little: the guests fault in what the prefetcher has not copied
// within a pass, and the two passes the test waits for take longer.
//
// Issue 7 asks for 20 sandboxes; THAW_TEST_RESTART_N=20 runs that
// (docs/benchmarks/thawd.md).
func TestRestartReattaches(t *testing.T) {
	testenv.RequireKVM(t)
	testenv.RequireUFFD(t)
	testenv.RequireRoot(t)
	n := envInt(t, "THAW_TEST_RESTART_N", 4)
	wsMiB := envInt(t, "THAW_TEST_RESTART_WS_MIB", 128)
	rate := uint64(wsMiB) << 20 * uint64(time.Second) / uint64(restartPrefetchSpan)
	bins := sandboxtest.Binaries(t)
	start := time.Now()
	snap := sandboxtest.ProbeSnapshotWith(t, t.TempDir(), sandboxtest.ProbeConfig{
		// Short ticks: a restored probe is ready (ticks) within milliseconds,
		// long before its working set can have been prefetched.
		Pages: 1, Spin: 50, WorkingSetMiB: wsMiB})
	t.Logf("probe template with a %d MiB working set (%d MiB guest) snapshotted in %v", wsMiB, snap.MemMiB, time.Since(start).Round(time.Millisecond))
	// The data directory holds a copy of the memory file and the access log.
	data := filepath.Join(disktest.Mount(t, "xfs", 400+2*snap.MemMiB), "d")
	t.Cleanup(func() {
		// A failed test may leave shims and VMMs: they would keep the
		// mount busy.
		for _, pid := range sandboxtest.ProcessesUnder(data) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	sock := filepath.Join(t.TempDir(), "thawd.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()

	// The recording run must see a whole pass over the working set: give
	// it far longer than one takes (about 25 MiB/s on PVM).
	first := startThawd(t, bins, data, sock, "-uffd-record-max", "10m", "-max-concurrent-restores", strconv.Itoa(n),
		"-uffd-prefetch-rate", strconv.FormatUint(rate, 10))
	c := thawapi.NewUnix(sock)
	start = time.Now()
	tpl, err := c.RegisterTemplate(ctx, "probe", thawapi.RegisterTemplate{VMState: snap.VMState, Memory: snap.Memory, Rootfs: snap.Rootfs,
		Kernel: snap.Kernel, VCPUs: snap.VCPUs, MemoryMiB: snap.MemMiB,
		Ready: &thawapi.ReadyCheck{Kind: "serial", Marker: sandboxtest.ReadyMarker}})
	if err != nil {
		t.Fatalf("%v\n%s", err, first.logs.String())
	}
	var logPages int64
	for _, b := range tpl.Builds {
		if b.ID == tpl.Current {
			logPages = b.AccessLogPages
		}
	}
	t.Logf("template registered with its recording run in %v: access log %d pages (%d MiB)", time.Since(start).Round(time.Millisecond), logPages, logPages>>8)
	if want := int64(wsMiB) << 8; logPages < want {
		t.Fatalf("access log: got %d pages, want at least the %d of the working set (did the recording run end before a whole pass?)", logPages, want)
	}

	// Create all sandboxes at once, so that their prefetches overlap.
	shims := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start = time.Now()
	for i := range n {
		wg.Go(func() {
			sb, err := c.CreateSandbox(ctx, thawapi.CreateSandbox{ID: fmt.Sprintf("s%d", i), Template: "probe"})
			switch {
			case err != nil:
				errs <- fmt.Errorf("create %d: %w", i, err)
			case sb.State != "running" || sb.ShimPID == 0 || len(sb.Create) == 0:
				errs <- fmt.Errorf("create %d: got %+v, want running with a shim and timings", i, sb)
			default:
				mu.Lock()
				shims[sb.ID] = sb.ShimPID
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	created := time.Since(start)
	close(errs)
	for err := range errs {
		t.Fatalf("%v\n%s", err, first.logs.String())
	}
	first.stop(syscall.SIGKILL)
	killed := time.Since(start)

	// Read after the kill, a prefetch not yet done was running through it.
	prefetching := 0
	var maxFaulted uint64
	for id := range shims {
		st := shimStats(t, data, id)
		// Every shim's page server began after the creates did, so none
		// may have prefetched more than the rate allows since then, plus
		// one run (uffd.Config's promise; 1 MiB runs).
		budget := float64(rate)*time.Since(start).Seconds() + 1<<20
		if !st.PrefetchDone && int64(st.PrefetchedPages) < logPages {
			prefetching++
		}
		maxFaulted = max(maxFaulted, st.FaultPages)
		if st.PrefetchRate != rate {
			t.Errorf("%s's page server: prefetch rate %d, want thawd's %d", id, st.PrefetchRate, rate)
		}
		if float64(st.PrefetchBytes) > budget {
			t.Errorf("%s prefetched %d bytes by the kill, more than the %d bytes/s limit allows (%.0f)", id, st.PrefetchBytes, rate, budget)
		}
		t.Logf("%s at the kill: prefetched %d of %d logged pages (faults %d), done %v, waited %v for the limit", id, st.PrefetchedPages, logPages, st.FaultPages, st.PrefetchDone, st.PrefetchWait.Round(time.Millisecond))
	}
	t.Logf("%d creates took %v; thawd killed at %v; %d of %d shims still prefetching; the busiest guest had faulted in %d%% of its working set", n, created.Round(time.Millisecond), killed.Round(time.Millisecond), prefetching, n, int64(maxFaulted)*100/logPages)
	if prefetching == 0 {
		t.Fatalf("no shim was still prefetching when thawd was killed: the test proves nothing about a restart during prefetch (with prefetch limited to %d bytes/s, the guests must have faulted in their whole working sets before the kill: raise THAW_TEST_RESTART_WS_MIB)", rate)
	}
	before := map[string]int{}
	for id := range shims {
		before[id] = ticks(t, data, id)
	}

	second := startThawd(t, bins, data, sock)
	defer second.stop(syscall.SIGTERM)
	sbs, err := c.Sandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(sbs) != n {
		t.Errorf("sandboxes after the restart: got %d, want %d", len(sbs), n)
	}
	for _, sb := range sbs {
		if sb.State != "running" || sb.ShimPID != shims[sb.ID] {
			t.Errorf("sandbox %s after the restart: got %s under shim %d, want running under %d (%s)", sb.ID, sb.State, sb.ShimPID, shims[sb.ID], sb.Reason)
		}
	}
	if !strings.Contains(second.logs.String(), "action=reattach") {
		t.Errorf("the second thawd logged no reattach:\n%s", second.logs.String())
	}

	// Every sandbox finishes its prefetch, keeps ticking (not frozen) and
	// completes a full pass over its working set after its restore with
	// every page right (not corrupted). The serial log starts at the
	// restore, so its first pass line may end a pass the template began;
	// the second ends one made entirely by the restored guest.
	start = time.Now()
	deadline, _ := ctx.Deadline()
	for id, b := range before {
		for {
			st := shimStats(t, data, id)
			passes := wsPasses(t, data, id)
			if st.PrefetchDone && len(passes) >= 2 && ticks(t, data, id) > b {
				t.Logf("%s: prefetched %d pages (faults %d) in %v, %v of it waiting for the limit; %d passes: %q", id, st.PrefetchedPages, st.FaultPages, st.PrefetchTime.Round(time.Millisecond), st.PrefetchWait.Round(time.Millisecond), len(passes), passes[len(passes)-1])
				// The shim kept the limit it was started with, though the
				// new thawd has none.
				if st.PrefetchRate != rate {
					t.Errorf("%s after the restart: prefetch rate %d, want the %d it was created with", id, st.PrefetchRate, rate)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("sandbox %s after the restart: prefetch done %v, ticks %d (%d at the kill), working-set passes %q: frozen or stalled", id, st.PrefetchDone, ticks(t, data, id), b, passes)
			}
			time.Sleep(100 * time.Millisecond)
		}
		for _, p := range wsPasses(t, data, id) {
			if !strings.HasSuffix(p, " ok") {
				t.Errorf("sandbox %s: the guest found its working set corrupted: %q", id, p)
			}
		}
		// The pattern's checksum, printed on every tick, never changes.
		if sums := tickSums(t, data, id); len(sums) != 1 {
			t.Errorf("sandbox %s: the probe's pattern checksum changed: got sums %v, want one", id, sums)
		}
	}
	t.Logf("all %d sandboxes verified after the restart in %v", n, time.Since(start).Round(time.Millisecond))

	for id, pid := range shims {
		if err := c.DeleteSandbox(ctx, id); err != nil {
			t.Errorf("delete %s through the new thawd: %v", id, err)
		}
		if _, err := os.Stat(filepath.Join(data, "sandboxes", id)); !os.IsNotExist(err) {
			t.Errorf("directory of %s after delete: %v", id, err)
		}
		if err := syscall.Kill(pid, 0); err == nil {
			if st, err := proc.ReadStat(pid); err != nil || st.State != 'Z' {
				t.Errorf("shim %d of %s still running after delete", pid, id)
			}
		}
	}
	assertAllDeleted(ctx, t, c, data, second)
}

// restartPrefetchSpan is how long TestRestartReattaches's rate limit makes
// the prefetch of a whole working set take: far longer than creating the
// sandboxes and killing thawd on any machine.
const restartPrefetchSpan = 40 * time.Second

// assertAllDeleted checks that, once every sandbox was deleted through
// thawd p, nothing is left: no record, no sandbox directory (sockets,
// logs), and no process under data but p itself.
func assertAllDeleted(ctx context.Context, t *testing.T, c *thawapi.Client, data string, p *thawdProc) {
	t.Helper()
	if sbs, err := c.Sandboxes(ctx); err != nil || len(sbs) != 0 {
		t.Errorf("sandboxes after deleting all: got %v, %v; want none", sbs, err)
	}
	if ents, err := os.ReadDir(filepath.Join(data, "sandboxes")); err != nil || len(ents) != 0 {
		t.Errorf("sandbox directories (sockets, logs) after deleting all: got %v, %v; want none", ents, err)
	}
	if pids := sandboxtest.ProcessesUnder(data); !slices.Equal(pids, []int{p.cmd.Process.Pid}) {
		t.Errorf("processes under %s after deleting all: got %v, want only thawd (%d)", data, pids, p.cmd.Process.Pid)
	}
}

// shimStats reads a sandbox's page-server counters from its shim.
func shimStats(t *testing.T, data, id string) shim.PageStats {
	t.Helper()
	c := shim.NewClient(filepath.Join(data, "sandboxes", id, shim.ControlSocketName))
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.Stats(ctx)
	if err != nil {
		t.Fatalf("stats of %s's shim: %v", id, err)
	}
	if !st.Serving {
		t.Fatalf("%s's shim serves no pages", id)
	}
	return st
}

// TestRestartDuringCreates kills thawd with SIGKILL while creates are
// under way, each with its shim (and the builtin VMM in it) running and its guest ticking but
// not yet ready (the template's ready marker never appears). The new thawd
// must fail every interrupted create with the reason, stop its shim and
// VMM, and let it be deleted without anything left.
func TestRestartDuringCreates(t *testing.T) {
	testenv.RequireKVM(t)
	testenv.RequireUFFD(t)
	testenv.RequireRoot(t)
	const n = 3
	bins := sandboxtest.Binaries(t)
	snap := sandboxtest.ProbeSnapshot(t, t.TempDir())
	data := filepath.Join(disktest.Mount(t, "xfs", 400), "d")
	t.Cleanup(func() {
		for _, pid := range sandboxtest.ProcessesUnder(data) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	sock := filepath.Join(t.TempDir(), "thawd.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// No recording run: it would wait for the marker too.
	first := startThawd(t, bins, data, sock, "-uffd-prefetch=false", "-ready-timeout", "10m")
	c := thawapi.NewUnix(sock)
	if _, err := c.RegisterTemplate(ctx, "never-ready", thawapi.RegisterTemplate{VMState: snap.VMState, Memory: snap.Memory, Rootfs: snap.Rootfs,
		Kernel: snap.Kernel, VCPUs: snap.VCPUs, MemoryMiB: snap.MemMiB,
		Ready: &thawapi.ReadyCheck{Kind: "serial", Marker: "a line the probe never prints"}}); err != nil {
		t.Fatal(err)
	}
	cctx, stopCreates := context.WithCancel(ctx)
	defer stopCreates()
	for i := range n {
		go c.CreateSandbox(cctx, thawapi.CreateSandbox{ID: fmt.Sprintf("c%d", i), Template: "never-ready"})
	}
	// Wait until every guest runs: the creates are in their ready phase.
	deadline := time.Now().Add(2 * time.Minute)
	for i := 0; i < n; {
		b, _ := os.ReadFile(filepath.Join(data, "sandboxes", fmt.Sprintf("c%d", i), "vmm.log"))
		if strings.Contains(string(b), sandboxtest.ReadyMarker) {
			i++
			continue
		}
		if time.Now().After(deadline) {
			t.Fatalf("create c%d: no guest running after 2 minutes\n%s", i, first.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	sbs, err := c.Sandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sb := range sbs {
		if sb.State != "creating" {
			t.Fatalf("sandbox %s before the kill: got %s, want creating", sb.ID, sb.State)
		}
	}
	if len(sbs) != n {
		t.Fatalf("sandboxes before the kill: got %d, want %d creating", len(sbs), n)
	}
	// The creates' shims, by pid and start time: one process each, the
	// builtin VMM running in its shim.
	procs := map[int]uint64{}
	for _, pid := range sandboxtest.ProcessesUnder(filepath.Join(data, "sandboxes")) {
		if st, err := proc.ReadStat(pid); err == nil {
			procs[pid] = st.StartTime
		}
	}
	if len(procs) != n {
		t.Fatalf("processes of the creates: got %v, want one shim each (%d), the VMM inside it", procs, n)
	}
	first.stop(syscall.SIGKILL)
	stopCreates()

	second := startThawd(t, bins, data, sock)
	defer second.stop(syscall.SIGTERM)
	if sbs, err = c.Sandboxes(ctx); err != nil {
		t.Fatal(err)
	}
	if len(sbs) != n {
		t.Errorf("sandboxes after the restart: got %d, want %d", len(sbs), n)
	}
	for _, sb := range sbs {
		if sb.State != "failed" || !strings.Contains(sb.Reason, "create interrupted") {
			t.Errorf("sandbox %s after the restart: got %s (%q), want failed: create interrupted", sb.ID, sb.State, sb.Reason)
		}
	}
	// Their shims and VMMs were stopped by the start-up pass.
	for pid, start := range procs {
		if alive, err := proc.Alive(pid, start); alive || err != nil {
			t.Errorf("process %d of an interrupted create after the restart: alive %v, %v; want it gone", pid, alive, err)
		}
	}
	for _, sb := range sbs {
		if err := c.DeleteSandbox(ctx, sb.ID); err != nil {
			t.Errorf("delete %s: %v", sb.ID, err)
		}
	}
	assertAllDeleted(ctx, t, c, data, second)
}
