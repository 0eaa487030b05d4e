package nested

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/thawvm/thaw/internal/testenv"
)

func TestParseMark(t *testing.T) {
	tests := []struct {
		line, name, arg string
		ok              bool
	}{
		{"thaw-nested-mark init", "init", "", true},
		{"thaw-nested-mark payload-exit 3", "payload-exit", "3", true},
		{"thaw-nested-mark error insmod kvm failed", "error", "insmod kvm failed", true},
		{"[    3.1] virtio_blk virtio1: thaw-nested-mark kvm-ready", "kvm-ready", "", true},
		{"thaw-nested-mark ", "", "", false},
		{"thaw-nested-mark", "", "", false},
		{"hello from L1", "", "", false},
	}
	for _, tt := range tests {
		name, arg, ok := parseMark(tt.line)
		if name != tt.name || arg != tt.arg || ok != tt.ok {
			t.Errorf("parseMark(%q) = %q, %q, %v; want %q, %q, %v", tt.line, name, arg, ok, tt.name, tt.arg, tt.ok)
		}
	}
}

func FuzzParseMark(f *testing.F) {
	f.Add("thaw-nested-mark payload-exit 3")
	f.Add("x thaw-nested-mark  init\r")
	f.Fuzz(func(t *testing.T, line string) {
		name, _, ok := parseMark(line)
		if ok != (name != "") {
			t.Fatalf("parseMark(%q): ok %v with name %q", line, ok, name)
		}
		if strings.ContainsAny(name, " \n") {
			t.Fatalf("parseMark(%q): name %q has a separator in it", line, name)
		}
		if ok && !strings.Contains(line, markPrefix) {
			t.Fatalf("parseMark(%q): found a mark without the prefix", line)
		}
	})
}

func TestParseModinfo(t *testing.T) {
	tests := []struct {
		section string
		want    []string
	}{
		{"license=GPL\x00depends=kvm,irqbypass\x00name=kvm_amd\x00", []string{"kvm", "irqbypass"}},
		{"depends=\x00name=kvm\x00", nil},
		{"depends=virtio-pci-modern-dev\x00", []string{"virtio_pci_modern_dev"}},
		{"name=tun\x00", nil},
		{"", nil},
	}
	for _, tt := range tests {
		if got := parseModinfo([]byte(tt.section)); !slices.Equal(got, tt.want) {
			t.Errorf("parseModinfo(%q) = %q, want %q", tt.section, got, tt.want)
		}
	}
}

func TestResolveBuiltinModules(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/drivers/block/virtio_blk.ko\nkernel/drivers/virtio/virtio-pci.ko\n"), 0o644)
	got, err := resolveModules(dir, []string{"virtio_blk", "virtio_pci"})
	if err != nil || len(got) != 0 {
		t.Errorf("resolving built-in modules = %v, %v; want nothing to load", got, err)
	}
	if _, err := resolveModules(dir, []string{"kvm_amd"}); err == nil || !strings.Contains(err.Error(), "kvm_amd") {
		t.Errorf("resolving a module that is neither built in nor present: got %v, want an error naming it", err)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Config)
		ok     bool
	}{
		{"defaults", func(*Config) {}, true},
		{"relative cache", func(c *Config) { c.CacheDir = "cache" }, false},
		{"no cpus", func(c *Config) { c.CPUs = -1 }, false},
		{"tiny memory", func(c *Config) { c.MemoryMiB = 64 }, false},
		{"negative timeout", func(c *Config) { c.Timeouts.Setup = -time.Second }, false},
		{"no attempts", func(c *Config) { c.Attempts = -1 }, false},
	}
	for _, tt := range tests {
		var c Config
		tt.change(&c)
		c.setDefaults()
		if err := c.Validate(); (err == nil) != tt.ok {
			t.Errorf("%s: Validate() = %v, want ok %v", tt.name, err, tt.ok)
		}
	}
}

func TestProbeHost(t *testing.T) {
	testenv.RequireKVM(t)
	tests := []struct {
		modules []string
		want    bool
	}{
		{[]string{"kvm", "kvm_pvm"}, false},
		{[]string{"kvm", "kvm_amd"}, true},
		{[]string{"kvm", "kvm_intel"}, true},
		{[]string{"kvm", "kvm_pvm", "kvm_intel"}, false},
		{[]string{"kvm"}, false},
	}
	for _, tt := range tests {
		dir := t.TempDir()
		for _, m := range tt.modules {
			os.Mkdir(filepath.Join(dir, m), 0o755)
		}
		if got, why := probeHost(dir); got != tt.want {
			t.Errorf("probeHost with modules %v = %v (%s), want %v", tt.modules, got, why, tt.want)
		}
	}
	direct, why := HostRunsLinuxGuests()
	t.Logf("this host: direct %v: %s", direct, why)
	if testenv.KVMIsPVM() && direct {
		t.Errorf("HostRunsLinuxGuests() = true on a kvm_pvm host, want false")
	}
}

// writePayload makes a payload directory whose run script is script.
func writePayload(t *testing.T, script string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "run"), []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// The payload used by the direct and nested runs: output, an exit code,
// nested result files, a file of its own it reads back, and a leftover
// process holding its output open, which must not keep the run waiting.
const echoScript = `sleep 600 &
echo "out from $(cat data.txt)"
echo "err line" >&2
mkdir -p "$THAW_RESULTS/sub"
echo one > "$THAW_RESULTS/one.txt"
echo two > "$THAW_RESULTS/sub/two.txt"
exit 3
`

func checkEchoResult(t *testing.T, r *Result) {
	t.Helper()
	if r.ExitCode != 3 {
		t.Errorf("exit code %d, want 3", r.ExitCode)
	}
	for _, want := range []string{"out from payload data", "err line"} {
		if !strings.Contains(string(r.Output), want) {
			t.Errorf("output %q does not contain %q", r.Output, want)
		}
	}
	for name, want := range map[string]string{"one.txt": "one\n", "sub/two.txt": "two\n"} {
		got, err := os.ReadFile(filepath.Join(r.Files, name))
		if err != nil {
			t.Errorf("result file %s: %v", name, err)
		} else if string(got) != want {
			t.Errorf("result file %s = %q, want %q", name, got, want)
		}
	}
}

func echoPayload(t *testing.T) string {
	dir := writePayload(t, echoScript)
	if err := os.WriteFile(filepath.Join(dir, "data.txt"), []byte("payload data"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestRunDirect(t *testing.T) {
	r, err := RunDirect(context.Background(), Payload{Dir: echoPayload(t)}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	checkEchoResult(t, r)
	if r.Nested {
		t.Error("RunDirect says it ran nested")
	}
}

func TestBadPayload(t *testing.T) {
	h, err := New(Config{}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	noRun := t.TempDir()
	notExec := t.TempDir()
	os.WriteFile(filepath.Join(notExec, "run"), []byte("#!/bin/sh\n"), 0o644)
	for dir, want := range map[string]string{noRun: "needs an executable run script", notExec: "chmod +x"} {
		_, err := h.Run(context.Background(), Payload{Dir: dir}, t.TempDir())
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Run with payload %s: got error %v, want one containing %q", dir, err, want)
		}
	}
}

// requireHarness skips or, under THAW_REQUIRE_KVM=1, fails a test that
// boots L1 when the host lacks the harness's tools. The harness itself
// needs no host KVM: QEMU emulates everything.
func requireHarness(t *testing.T) *Harness {
	t.Helper()
	if m := MissingTools(); len(m) > 0 {
		missing(t, "the nested harness needs "+strings.Join(m, ", ")+": run scripts/setup")
	}
	h, err := New(Config{}, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestL1Modules(t *testing.T) {
	h := requireHarness(t)
	k, err := h.fetchL1Kernel(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	paths, err := resolveModules(k.modules, l1Modules)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range paths {
		names = append(names, moduleName(p))
	}
	t.Logf("load order: %v", names)
	pos := func(m string) int {
		i := slices.Index(names, m)
		if i < 0 {
			t.Fatalf("load order %v lacks %s", names, m)
		}
		return i
	}
	for _, before := range [][2]string{{"kvm", "kvm_amd"}, {"virtio", "virtio_pci"}, {"virtio", "virtio_blk"}} {
		if pos(before[0]) > pos(before[1]) {
			t.Errorf("load order %v has %s after %s, which needs it", names, before[0], before[1])
		}
	}
	if _, err := resolveModules(k.modules, []string{"no_such_module"}); err == nil {
		t.Error("resolving a missing module: got nil error")
	}
}

func TestRunNested(t *testing.T) {
	h := requireHarness(t)
	work := t.TempDir()
	r, err := h.Run(t.Context(), Payload{Dir: echoPayload(t)}, work)
	if err != nil {
		t.Fatal(err)
	}
	checkEchoResult(t, r)
	if r.Paging != PagingShadow {
		t.Errorf("L1 paging %q, want %q (the default)", r.Paging, PagingShadow)
	}
	if !r.Nested || r.Attempts < 1 || r.KVMReady <= 0 {
		t.Errorf("result says nested %v, attempts %d, kvm ready after %v; want true, ≥1, >0", r.Nested, r.Attempts, r.KVMReady)
	}
	serial, err := os.ReadFile(r.Serial)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"thaw-nested-mark kvm-ready", "thaw-nested-mark paging shadow", "out from payload data"} {
		if !strings.Contains(string(serial), want) {
			t.Errorf("serial log %s lacks %q", r.Serial, want)
		}
	}
	t.Logf("QEMU start → /dev/kvm ready %v, payload %v, total %v", r.KVMReady, r.Run, r.Total)
}

func TestHangIsRetriedThenReported(t *testing.T) {
	h := requireHarness(t)
	p := Payload{Dir: writePayload(t, "echo started; sleep 600\n"), Timeout: 3 * time.Second}
	_, err := h.Run(t.Context(), p, t.TempDir())
	var hang *HangError
	if !errors.As(err, &hang) {
		t.Fatalf("Run with a payload that sleeps: got %v, want a HangError", err)
	}
	if hang.Step != StepPayload || !strings.HasPrefix(err.Error(), "attempt 2:") {
		t.Errorf("got %q (step %q), want step %q on attempt 2", err, hang.Step, StepPayload)
	}
	if !slices.ContainsFunc(hang.Tail, func(l string) bool { return strings.Contains(l, "started") }) {
		t.Errorf("hang report's serial tail %q lacks the payload's output", hang.Tail)
	}
}

func TestCrashIsRetriedThenReported(t *testing.T) {
	h := requireHarness(t)
	p := Payload{Dir: writePayload(t, "echo started; poweroff -f\n")}
	_, err := h.Run(t.Context(), p, t.TempDir())
	var crash *CrashError
	if !errors.As(err, &crash) {
		t.Fatalf("Run with a payload that powers L1 off: got %v, want a CrashError", err)
	}
	if crash.Step != StepPayload || !strings.HasPrefix(err.Error(), "attempt 2:") || !strings.Contains(err.Error(), "started") {
		t.Errorf("got %q (step %q), want step %q on attempt 2 with the payload's output in the serial tail", err, crash.Step, StepPayload)
	}
}

func TestFindPVHNote(t *testing.T) {
	le := binary.LittleEndian
	note := func(name string, typ uint32, desc []byte) []byte {
		b := le.AppendUint32(nil, uint32(len(name)+1))
		b = le.AppendUint32(b, uint32(len(desc)))
		b = le.AppendUint32(b, typ)
		b = append(b, name...)
		b = append(b, 0)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		b = append(b, desc...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	entry := le.AppendUint32(nil, 0x1000370)
	tests := []struct {
		name string
		data []byte
		want uint32
		ok   bool
	}{
		{"alone", note("Xen", 18, entry), 0x1000370, true},
		{"after others", append(note("GNU", 3, []byte{1, 2, 3, 4, 5, 6}), note("Xen", 18, entry)...), 0x1000370, true},
		{"other xen note", note("Xen", 1, entry), 0, false},
		{"linux note", note("Linux", 18, entry), 0, false},
		{"truncated", note("Xen", 18, entry)[:14], 0, false},
		{"empty", nil, 0, false},
	}
	for _, tt := range tests {
		got, ok := findPVHNote(tt.data, le)
		if got != tt.want || ok != tt.ok {
			t.Errorf("%s: findPVHNote = %#x, %v; want %#x, %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
}

func FuzzFindPVHNote(f *testing.F) {
	f.Add([]byte{4, 0, 0, 0, 4, 0, 0, 0, 18, 0, 0, 0, 'X', 'e', 'n', 0, 1, 2, 3, 4})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 18, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		findPVHNote(data, binary.LittleEndian) // must not panic or loop
	})
}

// TestStopsEarly checks the paths that kill QEMU before L1 has booted: a
// boot step that times out (with retries off) and a cancelled context.
func TestStopsEarly(t *testing.T) {
	requireHarness(t)
	p := Payload{Dir: writePayload(t, "exit 0\n")}

	h, err := New(Config{Timeouts: Timeouts{Boot: 300 * time.Millisecond}, Attempts: 1}, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.Run(t.Context(), p, t.TempDir())
	var hang *HangError
	if !errors.As(err, &hang) || hang.Step != StepBoot || !strings.HasPrefix(err.Error(), "attempt 1:") {
		t.Errorf("Run with a 300ms boot timeout: got %v, want a boot HangError on attempt 1", err)
	}

	h = requireHarness(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	_, err = h.Run(ctx, p, t.TempDir())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Run with a 2s context: got %v, want context.DeadlineExceeded", err)
	}
}

func TestProgress(t *testing.T) {
	to := Timeouts{Boot: time.Hour, Setup: 2 * time.Hour, Payload: 3 * time.Hour, Shutdown: 4 * time.Hour}
	start := time.Now()
	at := func(s int) time.Time { return start.Add(time.Duration(s) * time.Second) }
	tests := []struct {
		name     string
		marks    []mark
		step     string
		timeout  time.Duration
		exitCode int
		exitErr  string // substring; "" for a finished run
	}{
		{"nothing yet", nil, StepBoot, time.Hour, -1, `during step "boot"`},
		{"init", []mark{{"init", "", at(5)}}, StepSetup, 2 * time.Hour, -1, `during step "setup"`},
		{"payload running", []mark{{"init", "", at(5)}, {"kvm-ready", "", at(6)}, {"payload-start", "", at(7)}},
			StepPayload, 3 * time.Hour, -1, `during step "payload"`},
		{"finished", []mark{{"init", "", at(5)}, {"kvm-ready", "", at(6)}, {"payload-start", "", at(7)},
			{"payload-exit", "4", at(9)}, {"done", "", at(10)}}, StepShutdown, 4 * time.Hour, 4, ""},
		{"exited without done", []mark{{"payload-start", "", at(7)}, {"payload-exit", "0", at(9)}},
			StepShutdown, 4 * time.Hour, 0, `during step "shutdown"`},
		{"init error", []mark{{"init", "", at(5)}, {"error", "insmod kvm failed", at(6)}},
			StepSetup, 2 * time.Hour, -1, `init failed in step "setup": insmod kvm failed`},
	}
	for _, tt := range tests {
		p := newProgress(to, false, start)
		for _, m := range tt.marks {
			if err := p.handle(m); err != nil {
				t.Fatalf("%s: handle(%v): %v", tt.name, m, err)
			}
		}
		p.timer.Stop()
		if p.step != tt.step || p.timeout != tt.timeout || p.r.ExitCode != tt.exitCode {
			t.Errorf("%s: step %q, timeout %v, exit %d; want %q, %v, %d", tt.name, p.step, p.timeout, p.r.ExitCode, tt.step, tt.timeout, tt.exitCode)
		}
		err := p.exitErr(nil)
		if tt.exitErr == "" && err != nil || tt.exitErr != "" && (err == nil || !strings.Contains(err.Error(), tt.exitErr)) {
			t.Errorf("%s: exitErr = %v, want %q", tt.name, err, tt.exitErr)
		}
		// Only L1 ending under a payload that did not finish is retried;
		// an init that reported its own failure is not.
		var crash *CrashError
		if wantCrash := strings.HasPrefix(tt.exitErr, "during step"); errors.As(err, &crash) != wantCrash {
			t.Errorf("%s: exitErr = %v: CrashError %v, want %v", tt.name, err, crash != nil, wantCrash)
		}
	}
	p := newProgress(to, false, start)
	p.handle(mark{"kvm-ready", "", at(6)})
	p.handle(mark{"payload-start", "", at(7)})
	p.handle(mark{"payload-exit", "0", at(9)})
	if p.r.KVMReady != 6*time.Second || p.r.Run != 2*time.Second {
		t.Errorf("KVMReady %v, Run %v; want 6s, 2s", p.r.KVMReady, p.r.Run)
	}
	if err := p.handle(mark{"payload-exit", "zero", at(9)}); err == nil {
		t.Error(`handle(payload-exit "zero"): got nil error`)
	}

	for _, tt := range []struct {
		want, got string
		ok        bool
	}{
		{PagingShadow, PagingShadow, true},
		{PagingNested, PagingNested, true},
		{"", PagingNested, true},
		{PagingShadow, PagingNested, false},
		{PagingNested, PagingShadow, false},
	} {
		p := newProgress(to, false, start)
		p.timer.Stop()
		p.wantPaging = tt.want
		err := p.handle(mark{"paging", tt.got, at(6)})
		if (err == nil) != tt.ok {
			t.Errorf("want paging %q, L1 reports %q: got error %v, want error %v", tt.want, tt.got, err, !tt.ok)
		}
		if tt.ok && p.r.Paging != tt.got {
			t.Errorf("want paging %q, L1 reports %q: got Result.Paging %q, want %q", tt.want, tt.got, p.r.Paging, tt.got)
		}
	}
}

func TestConfigPaging(t *testing.T) {
	for _, tt := range []struct {
		npt     bool
		want    string
		cmdline bool // qemuArgs' -append has thaw_npt=0
	}{
		{false, PagingShadow, true},
		{true, PagingNested, false},
	} {
		h, err := New(Config{NestedPaging: tt.npt}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		if got := h.cfg.paging(); got != tt.want {
			t.Errorf("NestedPaging %v: got paging %q, want %q", tt.npt, got, tt.want)
		}
		args := h.qemuArgs(bootSpec{}, "results.img")
		i := slices.Index(args, "-append")
		if i < 0 || i+1 >= len(args) {
			t.Fatalf("qemu args %q: no -append", args)
		}
		if got := slices.Contains(strings.Fields(args[i+1]), "thaw_npt=0"); got != tt.cmdline {
			t.Errorf("NestedPaging %v: kernel command line %q has thaw_npt=0 %v, want %v", tt.npt, args[i+1], got, tt.cmdline)
		}
	}
}

func TestWatchConsole(t *testing.T) {
	// Markers split across reads, with \r\n, and after other output.
	input := "boot noise\r\nthaw-nested-ma" + "rk init\r\n[ 1.0] x thaw-nested-mark kvm-ready\nno newline at end"
	marks := make(chan mark, 8)
	var out strings.Builder
	watchConsole(iotest.OneByteReader(strings.NewReader(input)), &out, marks)
	close(marks)
	var got []string
	for m := range marks {
		got = append(got, m.name)
	}
	if !slices.Equal(got, []string{"init", "kvm-ready"}) {
		t.Errorf("marks %q, want [init kvm-ready]", got)
	}
	if out.String() != input {
		t.Errorf("console copy %q, want the input unchanged", out.String())
	}
}
