package sandbox_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/daemon/sandbox"
	"github.com/thawvm/thaw/internal/daemon/sandbox/sandboxtest"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/daemon/template"
	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/procstat"
	"github.com/thawvm/thaw/internal/shim"
	"github.com/thawvm/thaw/internal/uffd"
)

var (
	idleSnapOnce sync.Once
	idleSnap     sandboxtest.Snapshot
)

// idleProbeSnapshot takes the idle probe's snapshot once per test binary
// (into the same temporary directory as probeSnapshot's, removed by
// TestMain).
func idleProbeSnapshot(t testing.TB) sandboxtest.Snapshot {
	t.Helper()
	probeSnapshot(t) // creates snapDir and checks the capabilities
	idleSnapOnce.Do(func() {
		dir := filepath.Join(snapDir, "idle")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		idleSnap = sandboxtest.IdleProbeSnapshot(t, dir)
	})
	if idleSnap.VMState == "" {
		t.Fatal("the idle probe snapshot could not be taken (see the first failure)")
	}
	return idleSnap
}

// densityBackends are the memory backends compared, in the order reported.
var densityBackends = []string{"uffd-prefetch", "uffd-ondemand", "file"}

// densityVMMs are the VMM modes compared: the builtin VMM (one process
// per sandbox, thawd's default) and thaw-vmm as the shim's child (two).
var densityVMMs = []string{"builtin", "thaw-vmm"}

// newDensityEnv is newEnv with the idle probe registered as template
// "idle" for backend (recorded when the backend prefetches), its VMM the
// builtin one or the thaw-vmm binary (vmm "thaw-vmm"), every shim's
// GOMAXPROCS procs (0: automatic).
func newDensityEnv(t testing.TB, vmm, backend string, procs int) *env {
	t.Helper()
	e := newEnv(t, func(o *sandbox.Options) {
		o.ShimProcs = procs
		o.Prefetch = backend == "uffd-prefetch"
		o.RecordMax = 3 * time.Second
		if vmm == "thaw-vmm" {
			o.VMM = filepath.Join(sandboxtest.Binaries(t), "thaw-vmm")
		}
	})
	e.settings.SetUFFD(backend != "file")
	e.registerSnapshot(t, "idle", idleProbeSnapshot(t), store.ReadyCheck{Kind: store.ReadySerial, Marker: sandboxtest.ReadyMarker}, true)
	return e
}

// cost is what one running sandbox costs the host, read from /proc once
// its guest idles. CPU times are cumulative since the processes started,
// so they are the create's (and its idling's) whole cost.
//
// With the builtin VMM the shim is the VMM: everything but guest memory
// and vCPU threads is counted once, as the shim's (vmm fields stay 0).
type cost struct {
	shimCPU, vmmCPU, vcpuCPU time.Duration // vmmCPU: the VMM's non-vCPU threads
	// PSS in bytes: guest memory (the VMM's userfaultfd-registered or
	// memory-file mappings: the pages the guest touched, and for File
	// its share of the page cache), the shim's mapping of the memory file
	// (its share of the page cache it served from), and the rest of each
	// process (runtime, heap, stacks, binary text).
	guestPSS, shimFilePSS, shimPSS, vmmPSS uint64
	// shimAnon and vmmAnon are the anonymous part of shimPSS and vmmPSS
	// (not shared, so PSS = RSS): the Go runtime's heap, stacks and
	// metadata and the binary's written data, what each process costs
	// however many sandboxes share its binary.
	shimAnon, vmmAnon uint64
	// shimSplit and vmmSplit are the processes' memory by kind.
	shimSplit, vmmSplit procstat.Split
	// vmmPID is the VMM's pid, for idleCPU.
	vmmPID int
	// idleShim and idleVMM are the CPU time the shim and the whole VMM
	// used per second of idling after the measurement.
	idleShim, idleVMM time.Duration
	// pages is the page server's counters once the guest idles (zero
	// for File): faults, prefetched pages and the faults' service times.
	pages uffd.Stats
	// procs is the shim's GOMAXPROCS once the guest idles.
	procs int
}

func (c cost) total() uint64 { return c.guestPSS + c.shimFilePSS + c.shimPSS + c.vmmPSS }

// waitIdle waits (up to a minute) until every vCPU thread of sb's VMM
// sleeps in KVM, and returns the VMM's pid.
func waitIdle(ctx context.Context, sb store.Sandbox) (int, error) {
	sc := shim.NewClient(sb.Shim.ControlSocket)
	defer sc.Close()
	st, err := sc.Status(ctx)
	if err != nil {
		return 0, err
	}
	if st.VMMPID == 0 {
		return 0, fmt.Errorf("sandbox %s: the shim reports no VMM", sb.ID)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		vcpus, idle, err := procstat.VCPUsIdle(st.VMMPID)
		if err != nil {
			return 0, err
		}
		if vcpus == sandboxtest.ProbeVCPUs && idle == vcpus {
			return st.VMMPID, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("sandbox %s: %d of %d vCPU threads sleep in KVM after a minute; the probe is not idle", sb.ID, idle, vcpus)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// measure reads sb's shim and VMM once its guest idles (waitIdle).
func measure(ctx context.Context, sb store.Sandbox, memFile string) (cost, error) {
	vmmPID, err := waitIdle(ctx, sb)
	if err != nil {
		return cost{}, err
	}
	c := cost{vmmPID: vmmPID}
	sc := shim.NewClient(sb.Shim.ControlSocket)
	defer sc.Close()
	ps, err := sc.Stats(ctx)
	if err != nil {
		return cost{}, err
	}
	c.pages = ps.Stats
	info, err := sc.Info(ctx)
	if err != nil {
		return cost{}, err
	}
	c.procs = info.Procs
	builtin := vmmPID == sb.Shim.PID
	if !builtin {
		sts, err := procstat.Threads(sb.Shim.PID)
		if err != nil {
			return cost{}, err
		}
		c.shimCPU = procstat.CPU(sts)
	}
	vts, err := procstat.Threads(vmmPID)
	if err != nil {
		return cost{}, err
	}
	for _, t := range vts {
		switch {
		case t.IsVCPU():
			c.vcpuCPU += t.CPU
		case builtin:
			c.shimCPU += t.CPU
		default:
			c.vmmCPU += t.CPU
		}
	}
	if !builtin {
		maps, err := procstat.Smaps(sb.Shim.PID)
		if err != nil {
			return cost{}, err
		}
		exe, err := procstat.Exe(sb.Shim.PID)
		if err != nil {
			return cost{}, err
		}
		c.shimSplit = procstat.SplitMappings(maps, exe)
		for _, m := range maps {
			if m.Path == memFile {
				c.shimFilePSS += m.Pss
			} else {
				c.shimPSS += m.Pss
				c.shimAnon += m.Anonymous
			}
		}
	}
	maps, err := procstat.Smaps(vmmPID)
	if err != nil {
		return cost{}, err
	}
	exe, err := procstat.Exe(vmmPID)
	if err != nil {
		return cost{}, err
	}
	if builtin {
		c.shimSplit = procstat.SplitMappings(maps, exe)
	} else {
		c.vmmSplit = procstat.SplitMappings(maps, exe)
	}
	for _, m := range maps {
		switch {
		// Guest memory: registered with the userfaultfd (Uffd backend),
		// or the VMM's writable private mapping of the memory file (File).
		case m.HasFlag("um") || m.Path == memFile && m.HasFlag("wr"):
			c.guestPSS += m.Pss
		// The page server's read-only mapping of the memory file.
		case m.Path == memFile:
			c.shimFilePSS += m.Pss
		case builtin:
			c.shimPSS += m.Pss
			c.shimAnon += m.Anonymous
		default:
			c.vmmPSS += m.Pss
			c.vmmAnon += m.Anonymous
		}
	}
	return c, nil
}

// minCreates is the fewest creates BenchmarkDensity makes per level.
const minCreates = 32

// idleWindow is how long idleCPU watches idle sandboxes.
const idleWindow = 2 * time.Second

// idleCPU measures the CPU time each sandbox's shim and VMM use per
// second while all of them idle together for idleWindow.
func idleCPU(sbs []store.Sandbox, costs []cost) error {
	read := func() ([]time.Duration, error) {
		out := make([]time.Duration, 0, 2*len(costs))
		cpu := func(pid int) (time.Duration, error) {
			ts, err := procstat.Threads(pid)
			return procstat.CPU(ts), err
		}
		for i, c := range costs {
			shim, err := cpu(sbs[i].Shim.PID)
			if err != nil {
				return nil, err
			}
			var vmm time.Duration // the builtin VMM's is the shim's, counted once
			if c.vmmPID != sbs[i].Shim.PID {
				if vmm, err = cpu(c.vmmPID); err != nil {
					return nil, err
				}
			}
			out = append(out, shim, vmm)
		}
		return out, nil
	}
	before, err := read()
	if err != nil {
		return err
	}
	start := time.Now()
	time.Sleep(idleWindow)
	after, err := read()
	if err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	for i := range costs {
		costs[i].idleShim = time.Duration(float64(after[2*i]-before[2*i]) / secs)
		costs[i].idleVMM = time.Duration(float64(after[2*i+1]-before[2*i+1]) / secs)
	}
	return nil
}

// proveAlive waits until sb's guest idles, pauses and resumes it through
// its VMM's API and waits for the idle probe's next tick on the serial
// console: the sandbox was idle, not frozen. (A pause that caught the
// probe between its tick and its HLT would leave nothing to wake.)
func proveAlive(ctx context.Context, sb store.Sandbox) error {
	if _, err := waitIdle(ctx, sb); err != nil {
		return err
	}
	logPath := filepath.Join(sb.Dir, shim.VMMLogName)
	count := func() (int, error) {
		b, err := os.ReadFile(logPath)
		return bytes.Count(b, []byte(sandboxtest.ReadyMarker)), err
	}
	before, err := count()
	if err != nil {
		return err
	}
	c := fcapi.NewClient(filepath.Join(sb.Dir, shim.APISocketName))
	defer c.Close()
	if err := c.Pause(ctx); err != nil {
		return fmt.Errorf("sandbox %s: %w", sb.ID, err)
	}
	if err := c.Resume(ctx); err != nil {
		return fmt.Errorf("sandbox %s: %w", sb.ID, err)
	}
	for {
		n, err := count()
		if err != nil {
			return err
		}
		if n > before {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("sandbox %s: no new tick after a pause and resume (%d ticks before): %w", sb.ID, before, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// selfCPU is this process's (thawd's) user and system CPU time.
func selfCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkDensity creates idle probe sandboxes (IdleProbeSnapshot: 2
// vCPUs, 64 MiB, a guest that halts once ready) through Manager.Create with
// the real shim and thaw-vmm, `concurrent` at a time, for each memory
// backend on the same template, and reports per create:
//
//   - latency (Create called → the probe's tick on the serial console)
//     p50 and p99 over every create of the run;
//   - host CPU time: thawd (this process, getrusage over the creates),
//     the shim, the VMM's own threads and its vCPU threads (schedstat of
//     each thread, cumulative since the process started, read once the
//     guest idles), and what shim and VMM cost per second while idle;
//   - PSS once idle, with `concurrent` sandboxes running: guest memory,
//     the shim's mapping of the memory file, and each process's rest.
//
// Each level runs b.N rounds of `concurrent` creates, and at least
// minCreates creates. Every sandbox is then proven alive (pause and resume through its VMM's
// API bring a new tick) and deleted. Run with
//
//	go test -run '^$' -bench BenchmarkDensity -benchtime 2x -timeout 60m ./internal/daemon/sandbox/
//
// THAW_DENSITY_CONCURRENCY (e.g. "1,16") picks other concurrency levels,
// THAW_DENSITY_VMM ("builtin", "thaw-vmm" or both, the default) the VMM
// modes: the builtin VMM in the shim's process, or thaw-vmm as its child,
// THAW_DENSITY_PROCS (e.g. "0,1") the shims' GOMAXPROCS (0: automatic;
// levels named /pN; default 1, thawd's shim_procs), THAW_DENSITY_BACKEND
// the backends.
func BenchmarkDensity(b *testing.B) {
	levels := []int{1, 16, 64}
	if v := os.Getenv("THAW_DENSITY_CONCURRENCY"); v != "" {
		levels = nil
		for _, f := range strings.Split(v, ",") {
			var n int
			if _, err := fmt.Sscanf(f, "%d", &n); err != nil || n < 1 || n > 256 {
				b.Fatalf("THAW_DENSITY_CONCURRENCY=%q: want comma-separated counts from 1 to 256", v)
			}
			levels = append(levels, n)
		}
	}
	vmms := densityVMMs
	if v := os.Getenv("THAW_DENSITY_VMM"); v != "" {
		vmms = strings.Split(v, ",")
		for _, m := range vmms {
			if !slices.Contains(densityVMMs, m) {
				b.Fatalf("THAW_DENSITY_VMM=%q: want a comma-separated list of %q", v, densityVMMs)
			}
		}
	}
	procs := []int{1} // thawd's default shim_procs
	if v := os.Getenv("THAW_DENSITY_PROCS"); v != "" {
		procs = nil
		for _, f := range strings.Split(v, ",") {
			var n int
			if _, err := fmt.Sscanf(f, "%d", &n); err != nil || n < 0 || n > shim.MaxProcs {
				b.Fatalf("THAW_DENSITY_PROCS=%q: want comma-separated counts from 0 (automatic) to %d", v, shim.MaxProcs)
			}
			procs = append(procs, n)
		}
	}
	backends := densityBackends
	if v := os.Getenv("THAW_DENSITY_BACKEND"); v != "" {
		backends = strings.Split(v, ",")
		for _, m := range backends {
			if !slices.Contains(densityBackends, m) {
				b.Fatalf("THAW_DENSITY_BACKEND=%q: want a comma-separated list of %q", v, densityBackends)
			}
		}
	}
	for _, backend := range backends {
		for _, concurrent := range levels {
			// The VMM modes and P counts side by side, so that they see
			// the same load. Short names: each is part of the sandboxes'
			// socket paths (b.TempDir), which must stay under 108 bytes.
			for _, vmm := range vmms {
				for _, p := range procs {
					name := fmt.Sprintf("%s/n=%d/%s", backend, concurrent, vmm)
					if os.Getenv("THAW_DENSITY_PROCS") != "" {
						name += fmt.Sprintf("/p%d", p) // at n=16, 107 bytes for the recording run's shim.sock
					}
					b.Run(name, func(b *testing.B) {
						benchDensity(b, vmm, backend, concurrent, p)
					})
				}
			}
		}
	}
}

func benchDensity(b *testing.B, vmm, backend string, concurrent, procs int) {
	e := newDensityEnv(b, vmm, backend, procs)
	tpl, err := e.st.Template("idle")
	if err != nil {
		b.Fatal(err)
	}
	memFile := filepath.Join(tpl.BuildByID(tpl.Current).Dir, template.MemoryName)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	var (
		mu      sync.Mutex
		lat     []time.Duration
		phases  = map[string][]time.Duration{}
		order   []string // phase names in create order
		costs   []cost
		thawdNS time.Duration
	)
	// At least minCreates creates per level, so that p50 and p99 at
	// concurrency 1 rest on more than b.N samples.
	rounds := max(b.N, (minCreates+concurrent-1)/concurrent)
	b.ResetTimer()
	for i := range rounds {
		sbs := make([]store.Sandbox, concurrent)
		var wg sync.WaitGroup
		cpu0 := selfCPU()
		for j := range concurrent {
			wg.Go(func() {
				start := time.Now()
				sb, err := e.m.Create(ctx, sandbox.CreateRequest{ID: fmt.Sprintf("d%d-%d", i, j), Template: "idle"})
				if err != nil {
					b.Error(err)
					return
				}
				mu.Lock()
				lat = append(lat, time.Since(start))
				for _, ph := range sb.Create {
					if _, ok := phases[ph.Name]; !ok {
						order = append(order, ph.Name)
					}
					phases[ph.Name] = append(phases[ph.Name], ph.Duration)
				}
				mu.Unlock()
				sbs[j] = sb
			})
		}
		wg.Wait()
		thawdNS += selfCPU() - cpu0
		b.StopTimer()
		var measured []store.Sandbox
		var round []cost
		for _, sb := range sbs {
			if sb.ID == "" {
				continue
			}
			c, err := measure(ctx, sb, memFile)
			if err != nil {
				b.Error(err)
				continue
			}
			measured = append(measured, sb)
			round = append(round, c)
		}
		if i == 0 {
			if err := idleCPU(measured, round); err != nil {
				b.Error(err)
			}
		}
		costs = append(costs, round...)
		for _, sb := range sbs {
			if sb.ID == "" {
				continue
			}
			if err := proveAlive(ctx, sb); err != nil {
				b.Error(err)
			}
		}
		for _, sb := range sbs {
			if sb.ID != "" {
				if err := e.m.Delete(ctx, sb.ID); err != nil {
					b.Error(err)
				}
			}
		}
		b.StartTimer()
	}
	b.StopTimer()
	if len(lat) == 0 || len(costs) == 0 {
		return
	}
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	kib := func(v uint64) float64 { return float64(v) / 1024 }
	var sum cost
	for _, c := range costs {
		sum.shimCPU += c.shimCPU
		sum.vmmCPU += c.vmmCPU
		sum.vcpuCPU += c.vcpuCPU
		sum.guestPSS += c.guestPSS
		sum.shimFilePSS += c.shimFilePSS
		sum.shimPSS += c.shimPSS
		sum.vmmPSS += c.vmmPSS
		sum.shimAnon += c.shimAnon
		sum.vmmAnon += c.vmmAnon
		sum.shimSplit = sum.shimSplit.Add(c.shimSplit)
		sum.vmmSplit = sum.vmmSplit.Add(c.vmmSplit)
		sum.pages.Faults += c.pages.Faults
		sum.pages.PrefetchedPages += c.pages.PrefetchedPages
		for k, n := range c.pages.Latency.Buckets {
			sum.pages.Latency.Buckets[k] += n
		}
		sum.procs = max(sum.procs, c.procs)
	}
	// Idle CPU was measured in the first round only.
	for _, c := range costs[:min(len(costs), concurrent)] {
		sum.idleShim += c.idleShim
		sum.idleVMM += c.idleVMM
	}
	idleN := time.Duration(min(len(costs), concurrent))
	n := time.Duration(len(costs))
	un := uint64(len(costs))
	b.ReportMetric(float64(len(lat)), "creates")
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[(len(lat)*99)/100]), "p99-ms")
	b.ReportMetric(ms(thawdNS/time.Duration(len(lat))), "thawd-cpu-ms/create")
	b.ReportMetric(ms(sum.shimCPU/n), "shim-cpu-ms/create")
	b.ReportMetric(ms(sum.vmmCPU/n), "vmm-cpu-ms/create")
	b.ReportMetric(ms(sum.vcpuCPU/n), "vcpu-cpu-ms/create")
	b.ReportMetric(kib(sum.total()/un), "pss-KiB/sandbox")
	b.ReportMetric(kib(sum.guestPSS/un), "guest-pss-KiB")
	b.ReportMetric(kib(sum.shimFilePSS/un), "shim-memfile-pss-KiB")
	b.ReportMetric(kib(sum.shimPSS/un), "shim-pss-KiB")
	b.ReportMetric(kib(sum.vmmPSS/un), "vmm-pss-KiB")
	b.ReportMetric(kib(sum.shimAnon/un), "shim-anon-KiB")
	b.ReportMetric(kib(sum.vmmAnon/un), "vmm-anon-KiB")
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
	b.ReportMetric(us(sum.idleShim/idleN), "idle-shim-cpu-us/s")
	b.ReportMetric(us(sum.idleVMM/idleN), "idle-vmm-cpu-us/s")
	// Fault service times over every create's faults (the histogram's
	// bucket bounds: exact to a factor of two; time a fault waited in the
	// userfaultfd before the page server read it is not in them).
	b.ReportMetric(float64(sum.pages.Faults)/float64(un), "faults/create")
	b.ReportMetric(float64(sum.pages.PrefetchedPages)/float64(un), "prefetched/create")
	b.ReportMetric(us(sum.pages.Latency.Quantile(0.5)), "fault-p50-us")
	b.ReportMetric(us(sum.pages.Latency.Quantile(0.99)), "fault-p99-us")
	b.ReportMetric(float64(sum.procs), "shim-procs")
	b.ReportMetric(0, "ns/op")
	var breakdown strings.Builder
	for _, name := range order {
		d := phases[name]
		slices.Sort(d)
		fmt.Fprintf(&breakdown, " %s %.1f", name, ms(d[len(d)/2]))
	}
	b.Logf("create phases, p50 ms:%s", breakdown.String()) // an op is a whole round; the metrics above are per create
	split := func(s procstat.Split) string {
		return fmt.Sprintf("binary %.0f, data %.0f, bss %.0f, heap and runtime %.0f, main stack %.0f, uffd %.0f, other %.0f",
			kib(s.Binary/un), kib(s.Data/un), kib(s.BSS/un), kib(s.Anon/un), kib(s.Stack/un), kib(s.UFFD/un), kib(s.Other/un))
	}
	b.Logf("PSS per process, KiB: shim: %s; VMM: %s", split(sum.shimSplit), split(sum.vmmSplit))
}

// TestIdleSandbox restores the idle probe through Manager.Create (the
// snapshot-load path of thaw-vmm's wake-on-resume) and checks what
// BenchmarkDensity relies on: the sandbox is ready, then every vCPU thread
// sleeps in KVM, the measurement sees its guest memory and both processes,
// and a pause and resume through the VMM's API bring a new tick.
func TestIdleSandbox(t *testing.T) {
	for _, tc := range []struct {
		vmm, backend string
		procs        int
	}{
		{"builtin", "uffd-ondemand", 0}, {"builtin", "uffd-ondemand", 1}, {"builtin", "file", 0}, {"thaw-vmm", "uffd-ondemand", 0},
	} {
		t.Run(fmt.Sprintf("%s/%s/p=%d", tc.vmm, tc.backend, tc.procs), func(t *testing.T) {
			e := newDensityEnv(t, tc.vmm, tc.backend, tc.procs)
			ctx := ctxT(t)
			sb, err := e.m.Create(ctx, sandbox.CreateRequest{ID: "idle1", Template: "idle"})
			if err != nil {
				t.Fatal(err)
			}
			tpl, err := e.st.Template("idle")
			if err != nil {
				t.Fatal(err)
			}
			c, err := measure(ctx, sb, filepath.Join(tpl.BuildByID(tpl.Current).Dir, template.MemoryName))
			if err != nil {
				t.Fatal(err)
			}
			builtin := tc.vmm == "builtin"
			own := !builtin // a VMM process of its own
			if c.guestPSS == 0 || c.shimPSS == 0 || c.shimAnon == 0 || c.shimSplit.Binary == 0 || c.vcpuCPU == 0 || c.shimCPU == 0 ||
				(c.vmmPSS != 0) != own || (c.vmmAnon != 0) != own || (c.vmmSplit.Anon != 0) != own || (c.vmmCPU != 0) != own {
				t.Errorf("measurement of a running sandbox: got %+v, want guest memory, shim memory (binary and anonymous), vCPU and shim CPU time, and VMM memory and CPU time only for a VMM process of its own", c)
			}
			// The shim's GOMAXPROCS: --procs when set; else (unless the
			// environment fixes it) the automatic sizing, the same default
			// as this process's at most 2, then for the builtin VMM one P
			// per vCPU plus one.
			if env := os.Getenv("GOMAXPROCS"); tc.procs > 0 || env == "" {
				want := tc.procs
				if want == 0 {
					def := runtime.GOMAXPROCS(0)
					want = min(def, 2)
					if builtin {
						want = min(max(def, 2), max(sandboxtest.ProbeVCPUs+1, 2))
					}
				}
				if c.procs != want {
					t.Errorf("shim GOMAXPROCS with procs %d: got %d, want %d", tc.procs, c.procs, want)
				}
			}
			if tc.backend == "uffd-ondemand" && c.shimFilePSS == 0 {
				t.Errorf("measurement of a running sandbox: got %+v, want the page server's memory file mapping", c)
			}
			for range 2 {
				if err := proveAlive(ctx, sb); err != nil {
					t.Fatal(err)
				}
			}
			if err := e.m.Delete(ctx, sb.ID); err != nil {
				t.Fatal(err)
			}
		})
	}
}
