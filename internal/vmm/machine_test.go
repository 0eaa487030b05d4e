package vmm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thawvm/thaw/guest/probe"
	kabi "github.com/thawvm/thaw/internal/abi/kvm"
	"github.com/thawvm/thaw/internal/testenv"
)

// waitFor polls out until it contains want or the deadline passes.
func waitFor(t *testing.T, out *testenv.Buffer, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the guest's output after %v; output:\n%s", want, timeout, out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func probePath(t testing.TB) string {
	t.Helper()
	path, err := probe.Build(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	return path
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func startProbe(t *testing.T, cmdline string, vcpus int, memMiB uint64) (*Machine, *testenv.Buffer) {
	t.Helper()
	testenv.RequireKVM(t)
	out := &testenv.Buffer{}
	m := New(Config{Kernel: probePath(t), Cmdline: cmdline, VCPUs: vcpus, MemMiB: memMiB, Serial: out}, testLogger(t))
	t.Cleanup(func() {
		if err := m.invariants(); err != nil {
			t.Errorf("before Close: %v", err)
		}
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := m.invariants(); err != nil {
			t.Errorf("after Close: %v", err)
		}
	})
	if err := m.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return m, out
}

func wait(t *testing.T, m *Machine, timeout time.Duration) Exit {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	e, err := m.Wait(ctx)
	if err != nil {
		t.Fatalf("machine did not stop within %v (state %s)", timeout, m.State())
	}
	return e
}

// TestBootProbe boots the probe guest with 1 and 8 vCPUs and checks every
// line it prints: the command line arrived, the e820 map adds up to the
// configured RAM, the pattern checksum stays the same on every tick, and the
// guest's reset through the i8042 stops the machine cleanly.
func TestBootProbe(t *testing.T) {
	for _, vcpus := range []int{1, 8} {
		t.Run(fmt.Sprintf("vcpus=%d", vcpus), func(t *testing.T) {
			const memMiB = 64
			cmdline := "console=ttyS0 probe.pages=16 probe.ticks=3 probe.spin=1000"
			m, out := startProbe(t, cmdline, vcpus, memMiB)
			e := wait(t, m, 60*time.Second)
			if e.Err != nil || e.Reason != "guest reset through the i8042" {
				t.Fatalf("exit: got %v, want a clean reset through the i8042", e)
			}
			if m.State() != Stopped {
				t.Errorf("state after exit: got %s, want %s", m.State(), Stopped)
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			// RAM in the e820 map: everything but the 384 KiB between the
			// EBDA and 1 MiB.
			wantRAM := uint64(memMiB<<20) - (0x100000 - 0x9fc00)
			want := []string{
				fmt.Sprintf("probe: boot cmdline=%q", cmdline),
				fmt.Sprintf("probe: ram %d", wantRAM),
			}
			if len(lines) != 7 {
				t.Fatalf("got %d lines of output, want 7:\n%s", len(lines), out.String())
			}
			for i, w := range want {
				if lines[i] != w {
					t.Errorf("line %d: got %q, want %q", i, lines[i], w)
				}
			}
			sum, ok := strings.CutPrefix(lines[2], "probe: pattern pages=16 sum=")
			if !ok {
				t.Fatalf("line 2: got %q, want the pattern line", lines[2])
			}
			for i := 1; i <= 3; i++ {
				if w := fmt.Sprintf("probe: tick %d sum=%s", i, sum); lines[2+i] != w {
					t.Errorf("line %d: got %q, want %q", 2+i, lines[2+i], w)
				}
			}
			if lines[6] != "probe: done" {
				t.Errorf("last line: got %q, want %q", lines[6], "probe: done")
			}
		})
	}
}

// TestPauseResume checks that Pause really stops the guest (its output
// stops growing) and Resume restarts it where it was.
func TestPauseResume(t *testing.T) {
	m, out := startProbe(t, "probe.pages=16 probe.ticks=0 probe.spin=2000", 2, 32)
	waitFor(t, out, "probe: tick 2 ", 30*time.Second)
	for round := range 3 {
		if err := m.Pause(); err != nil {
			t.Fatalf("Pause: %v", err)
		}
		if got := m.State(); got != Paused {
			t.Fatalf("state after Pause: got %s, want %s", got, Paused)
		}
		before := out.String()
		time.Sleep(150 * time.Millisecond)
		if after := out.String(); after != before {
			t.Fatalf("round %d: guest printed while paused:\n%s", round, strings.TrimPrefix(after, before))
		}
		ticks := strings.Count(before, "probe: tick ")
		if err := m.Resume(); err != nil {
			t.Fatalf("Resume: %v", err)
		}
		waitFor(t, out, fmt.Sprintf("probe: tick %d ", ticks+1), 30*time.Second)
	}
	if err := m.Start(context.Background()); !errors.Is(err, ErrState) {
		t.Errorf("Start of a running machine: got %v, want ErrState", err)
	}
}

// TestCtrlAltDel sends Ctrl+Alt+Del to the probe guest, which reads the
// scancodes from the i8042 and resets.
func TestCtrlAltDel(t *testing.T) {
	m, out := startProbe(t, "probe.pages=16 probe.ticks=0 probe.spin=2000", 1, 32)
	waitFor(t, out, "probe: tick 1 ", 30*time.Second)
	if err := m.SendCtrlAltDel(); err != nil {
		t.Fatal(err)
	}
	e := wait(t, m, 30*time.Second)
	if e.Err != nil || !strings.Contains(out.String(), "probe: key 14\nprobe: key 11\nprobe: key e0\nprobe: key 71\nprobe: ctrl-alt-del\n") {
		t.Fatalf("after Ctrl+Alt+Del: exit %v, output:\n%s", e, out.String())
	}
	if err := m.SendCtrlAltDel(); !errors.Is(err, ErrState) {
		t.Errorf("SendCtrlAltDel to a stopped machine: got %v, want ErrState", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no kernel", Config{}, "kernel_image_path"},
		{"missing kernel", Config{Kernel: "/nonexistent/vmlinux"}, "/nonexistent/vmlinux"},
		{"kernel is a directory", Config{Kernel: "/"}, "not a regular file"},
		{"too many vcpus", Config{Kernel: "/proc/self/exe", VCPUs: 9}, "vcpu_count 9"},
		{"too little memory", Config{Kernel: "/proc/self/exe", MemMiB: 8}, "mem_size_mib 8"},
		{"long cmdline", Config{Kernel: "/proc/self/exe", Cmdline: strings.Repeat("x", 4096)}, "boot_args"},
		{"missing initrd", Config{Kernel: "/proc/self/exe", Initrd: "/nonexistent/initrd"}, "initrd"},
	}
	for _, tt := range tests {
		err := tt.cfg.withDefaults().Validate()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error mentioning %q", tt.name, err, tt.want)
		}
	}
	if err := (Config{Kernel: "/proc/self/exe"}).withDefaults().Validate(); err != nil {
		t.Errorf("valid config: %v", err)
	}
}

// TestMisbehavingGuests checks that a guest cannot crash or hang the VMM:
// accesses to unclaimed ports and MMIO are absorbed, a triple fault ends
// the machine cleanly, and a guest halted with interrupts off can still be
// paused and closed.
func TestMisbehavingGuests(t *testing.T) {
	t.Run("chaos", func(t *testing.T) {
		m, out := startProbe(t, "probe.chaos=3000 probe.pages=1 probe.ticks=1 probe.spin=10", 1, 32)
		e := wait(t, m, 60*time.Second)
		if e.Err != nil || !strings.Contains(out.String(), "probe: chaos done") || !strings.Contains(out.String(), "probe: done") {
			t.Fatalf("exit %v, output:\n%s", e, out.String())
		}
	})
	t.Run("triple fault", func(t *testing.T) {
		testenv.RequireKVM(t)
		dump := filepath.Join(t.TempDir(), "shutdown.mem")
		out := &testenv.Buffer{}
		m := New(Config{Kernel: probePath(t), Cmdline: "probe.triple=1", VCPUs: 2, MemMiB: 32, Serial: out, ShutdownDump: dump}, testLogger(t))
		t.Cleanup(func() { m.Close() })
		if err := m.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		e := wait(t, m, 30*time.Second)
		if e.Err != nil || !strings.Contains(e.Reason, "triple fault") {
			t.Fatalf("exit: got %v, want a clean stop naming the triple fault; output:\n%s", e, out.String())
		}
		// The report carries the registers, or says why it cannot (a
		// vCPU reset by KVM on AMD).
		if !strings.Contains(e.Reason, "cr2 ") && !strings.Contains(e.Reason, "registers unknown") {
			t.Errorf("triple fault report: got %q, want the registers (cr2, cr3, ...) or the reason they are unknown", e.Reason)
		}
		// Config.ShutdownDump: guest memory as the guest left it, the
		// probe's own image included.
		mem, err := os.ReadFile(dump)
		if err != nil {
			t.Fatalf("shutdown dump: %v (report %q)", err, e.Reason)
		}
		if len(mem) != 32<<20 || !bytes.Contains(mem, []byte("probe: triple fault")) {
			t.Errorf("shutdown dump: got %d bytes (probe's message in it: %v), want 32 MiB of guest memory holding the probe", len(mem), bytes.Contains(mem, []byte("probe: triple fault")))
		}
		if !strings.Contains(e.Reason, dump) {
			t.Errorf("triple fault report %q does not name the dump %s", e.Reason, dump)
		}
	})
	t.Run("hang", func(t *testing.T) {
		m, out := startProbe(t, "probe.hang=1", 2, 32)
		waitFor(t, out, "probe: hang", 30*time.Second)
		if err := m.Pause(); err != nil {
			t.Fatalf("Pause of a halted guest: %v", err)
		}
		if err := m.Resume(); err != nil {
			t.Fatal(err)
		}
		if m.State() != Running {
			t.Errorf("state of a halted guest: got %s, want %s", m.State(), Running)
		}
		// Close (in the cleanup) must return although the guest never will.
	})
	t.Run("idle", func(t *testing.T) {
		// probe.idle halts with interrupts off after each tick; only a
		// resume wakes it, and each wake prints exactly one more tick.
		m, out := startProbe(t, "probe.idle=1 probe.pages=0 probe.ticks=0", 2, 32)
		waitFor(t, out, "probe: tick 1 ", 30*time.Second)
		// Idle means both vCPU threads (named as Firecracker names them)
		// sleep in KVM: vCPU 0 halted, vCPU 1 waiting for a SIPI.
		deadline := time.Now().Add(30 * time.Second)
		for {
			blocked := vcpuThreadsBlocked(t)
			if blocked == 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("vCPU threads named fc_vcpu sleeping in kvm_vcpu_block: got %d, want 2", blocked)
			}
			time.Sleep(10 * time.Millisecond)
		}
		for n := 2; n <= 3; n++ {
			// The tick is printed a few instructions before the HLT:
			// pause until the pause finds vCPU 0 halted.
			var st uint32
			for try := 0; ; try++ {
				if err := m.Pause(); err != nil {
					t.Fatal(err)
				}
				var err error
				if st, err = m.hw.vcpus[0].cpu.MPState(); err != nil {
					t.Fatal(err)
				}
				if st == kabi.KVM_MP_STATE_HALTED || try == 100 {
					break
				}
				if err := m.Resume(); err != nil {
					t.Fatal(err)
				}
				time.Sleep(10 * time.Millisecond)
			}
			if st != kabi.KVM_MP_STATE_HALTED {
				t.Fatalf("vCPU 0 of an idle probe: got MP state %d, want %d (halted)", st, kabi.KVM_MP_STATE_HALTED)
			}
			if got := strings.Count(out.String(), "probe: tick "); got != n-1 {
				t.Fatalf("ticks before resume %d: got %d, want %d; output:\n%s", n-1, got, n-1, out.String())
			}
			if err := m.Resume(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, out, fmt.Sprintf("probe: tick %d ", n), 30*time.Second)
		}
	})
}

// vcpuThreadsBlocked counts this process's threads named "fc_vcpu N" that
// sleep in KVM's vCPU block (a halted or not yet started vCPU).
func vcpuThreadsBlocked(t *testing.T) int {
	t.Helper()
	tasks, err := filepath.Glob("/proc/self/task/*")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, task := range tasks {
		comm, _ := os.ReadFile(filepath.Join(task, "comm"))
		wchan, _ := os.ReadFile(filepath.Join(task, "wchan"))
		if strings.HasPrefix(string(comm), "fc_vcpu ") && string(wchan) == "kvm_vcpu_block" {
			n++
		}
	}
	return n
}

// TestStateErrors checks the calls a machine refuses in each state.
func TestStateErrors(t *testing.T) {
	m := New(Config{}, testLogger(t))
	for name, f := range map[string]func() error{
		"Pause":          m.Pause,
		"Resume":         m.Resume,
		"SendCtrlAltDel": m.SendCtrlAltDel,
	} {
		if err := f(); !errors.Is(err, ErrState) {
			t.Errorf("%s before Start: got %v, want ErrState", name, err)
		}
	}
	if err := m.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "kernel_image_path") {
		t.Errorf("Start without a kernel: got %v, want an error naming kernel_image_path", err)
	}
	if got := m.State(); got != NotStarted {
		t.Errorf("state after a failed Start: got %s, want %s", got, NotStarted)
	}
	if err := m.Configure(func(c *Config) error { c.VCPUs = 2; return nil }); err != nil {
		t.Errorf("Configure before Start: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("Close of an unstarted machine: %v", err)
	}
	if err := m.Configure(func(c *Config) error { return nil }); !errors.Is(err, ErrState) {
		t.Errorf("Configure after Close: got %v, want ErrState", err)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestStartFailureReleases checks that a Start failing halfway (the kernel
// is not an ELF) releases the KVM fds and memory it had created, and that
// a closed machine leaves no descriptor behind either.
func TestStartFailureReleases(t *testing.T) {
	testenv.RequireKVM(t)
	bad := filepath.Join(t.TempDir(), "bzImage")
	if err := os.WriteFile(bad, []byte("MZ not an ELF"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := openFDs(t)
	m := New(Config{Kernel: bad}, testLogger(t))
	if err := m.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "not an ELF") {
		t.Fatalf("Start with a non-ELF kernel: got %v, want an error saying it is not an ELF", err)
	}
	if after := openFDs(t); after != before {
		t.Errorf("open descriptors after a failed Start: got %d, want %d", after, before)
	}
	m.Close()

	m2, _ := startProbe(t, "probe.ticks=0", 2, 32)
	if err := m2.Close(); err != nil {
		t.Fatal(err)
	}
	if after := openFDs(t); after != before {
		t.Errorf("open descriptors after Close: got %d, want %d", after, before)
	}
}

// TestSerialInput feeds bytes to the guest's serial port; the probe echoes
// each one it reads.
func TestSerialInput(t *testing.T) {
	m, out := startProbe(t, "probe.pages=1 probe.ticks=0 probe.spin=1000", 1, 32)
	waitFor(t, out, "probe: tick 1 ", 30*time.Second)
	if err := m.SerialInput([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, out, "probe: serial 68\nprobe: serial 69\n", 30*time.Second)
}

// TestMemoryAboveMMIOGap boots a guest with 3.5 GiB, whose RAM is split
// around the MMIO gap: the probe writes the first and last 8 bytes of the
// region above 4 GiB, and the host must see them at the same
// guest-physical addresses in the second memory region.
func TestMemoryAboveMMIOGap(t *testing.T) {
	const memMiB = 3584
	m, out := startProbe(t, "probe.pages=1 probe.ticks=1 probe.spin=10 probe.high=1", 1, memMiB)
	e := wait(t, m, 60*time.Second)
	if e.Err != nil {
		t.Fatal(e)
	}
	top := uint64(4<<30 + (memMiB<<20 - 3<<30))
	if want := fmt.Sprintf("probe: high ok top=%016x", top); !strings.Contains(out.String(), want) {
		t.Fatalf("no %q in output:\n%s", want, out.String())
	}
	wantRAM := uint64(memMiB<<20) - (0x100000 - 0x9fc00)
	if want := fmt.Sprintf("probe: ram %d\n", wantRAM); !strings.Contains(out.String(), want) {
		t.Errorf("no %q in output:\n%s", want, out.String())
	}
	regions := m.hw.mem.Regions()
	if len(regions) != 2 {
		t.Fatalf("got %d memory regions, want 2", len(regions))
	}
	hi := regions[1].Host
	if got := string(hi[:8]); got != "hgihwaht" {
		t.Errorf("first bytes above 4 GiB seen by the host: got %q, want %q", got, "hgihwaht")
	}
	if got := binary.LittleEndian.Uint64(hi[len(hi)-8:]); got != top {
		t.Errorf("last 8 bytes of RAM seen by the host: got %#x, want %#x", got, top)
	}
}

// TestConcurrentControl races Pause and Resume from several goroutines
// against four running vCPUs, then closes the machine while it is paused:
// nothing may deadlock or fail, and the guest must still be counting.
func TestConcurrentControl(t *testing.T) {
	m, out := startProbe(t, "probe.pages=1 probe.ticks=0 probe.spin=1000", 4, 32)
	waitFor(t, out, "probe: tick 1 ", 30*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				if err := m.Pause(); err != nil {
					errs <- fmt.Errorf("Pause: %w", err)
				}
				if err := m.Resume(); err != nil {
					errs <- fmt.Errorf("Resume: %w", err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	n := strings.Count(out.String(), "probe: tick ")
	waitFor(t, out, fmt.Sprintf("probe: tick %d ", n+1), 30*time.Second)
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { closed <- m.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close of a paused machine did not return within 10s")
	}
	if got := m.State(); got != Stopped {
		t.Errorf("state after Close: got %s, want %s", got, Stopped)
	}
}

// TestSMPStartup starts the application processors from the guest with
// INIT and STARTUP IPIs, as Linux does at SMP bring-up: their vCPU threads
// wait in KVM_RUN, which returns EAGAIN when the IPIs wake them; the VMM
// must re-enter, not stop.
func TestSMPStartup(t *testing.T) {
	const vcpus = 4
	m, out := startProbe(t, fmt.Sprintf("probe.smp=%d probe.pages=1 probe.ticks=1 probe.spin=10", vcpus), vcpus, 32)
	e := wait(t, m, 60*time.Second)
	if e.Err != nil {
		t.Fatalf("exit: %v\noutput:\n%s", e, out.String())
	}
	if want := fmt.Sprintf("probe: smp started=%d\n", vcpus-1); !strings.Contains(out.String(), want) {
		t.Errorf("no %q in output:\n%s", want, out.String())
	}
}
