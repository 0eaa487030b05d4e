// Command driver is test/linux's payload program: next to a KVM that runs
// normal Linux guests (L1 of the nested harness, or a host with hardware
// KVM), it drives thaw-vmm through the Firecracker API with the real guest
// kernel and test/linux/guestinit as init, step by step:
//
//  1. boot: InstanceStart → the init's ready marker; a reboot from the
//     guest ends thaw-vmm with exit code 0;
//  2. devices: an ext4 drive the guest writes a file to (the host reads
//     it back from the image after the guest reboots: disk.ext4 in the
//     results), and vsock both ways with 1.5 MiB payloads checked byte for
//     byte: guest-initiated to <uds>_<port>, host-initiated with CONNECT;
//     the real thaw-agent answers health and round-trips a file;
//  3. snapshot: boot a guest (with the fast arguments: kernel log off)
//     with a vsock device, an echo listener and the real thaw-agent, whose
//     ticker process prints from a timer; pause, Full snapshot;
//  4. restore with the File backend and with the Uffd backend (pages
//     served by internal/uffd in this process, not the VMM's), each clone
//     on its own vsock socket (vsock_override): the same ticker continues
//     from the snapshot's tick, its clocks do not jump, a new
//     host-initiated vsock connection to the guest's listener echoes a
//     payload, the agent answers health, console input still reaches init,
//     and a reboot exits cleanly.
//
// Each step's times go to <results>/linux.json; it exits 1 at the first
// failing step, naming it, or 3 (ExitHang) when the guest made no progress
// within -step-timeout.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/thawvm/thaw/internal/agentapi"
	"github.com/thawvm/thaw/internal/fcapi"
)

// Results is what the driver measured, in milliseconds unless named
// otherwise; the host-side test decodes it.
type Results struct {
	VCPUs  int `json:"vcpus"`
	MemMiB int `json:"mem_mib"`
	// Steps lists the steps that passed, in order.
	Steps []string `json:"steps"`

	BootToMarkerMS        float64 `json:"boot_to_marker_ms"`         // InstanceStart call → ready marker
	GuestUptimeS          float64 `json:"guest_uptime_s"`            // the guest's /proc/uptime at the marker
	RebootToExitMS        float64 `json:"reboot_to_exit_ms"`         // ready marker → thaw-vmm exit 0
	FastBootToMarkerMS    float64 `json:"fast_boot_to_marker_ms"`    // the same with the fast arguments (the snapshot's template)
	SnapshotCreateMS      float64 `json:"snapshot_create_ms"`        // PUT /snapshot/create, Full
	PauseMS               float64 `json:"pause_ms"`                  // PATCH /vm Paused
	MemFileMiB            float64 `json:"mem_file_mib"`              // size of the memory file
	FileLoadMS            float64 `json:"file_load_ms"`              // PUT /snapshot/load, File, resume_vm
	FileFirstTickMS       float64 `json:"file_first_tick_ms"`        // load call → first tick after restore
	UffdLoadMS            float64 `json:"uffd_load_ms"`              // PUT /snapshot/load, Uffd, resume_vm
	UffdFirstTickMS       float64 `json:"uffd_first_tick_ms"`        // load call → first tick after restore
	FileAgentHealthyMS    float64 `json:"file_agent_healthy_ms"`     // load call → the restored agent answered health, File
	UffdAgentHealthyMS    float64 `json:"uffd_agent_healthy_ms"`     // load call → the restored agent answered health, Uffd
	FileEchoMiBps         float64 `json:"file_echo_mib_s"`           // host-initiated echo on a new connection after a File restore
	UffdEchoMiBps         float64 `json:"uffd_echo_mib_s"`           // the same after an Uffd restore
	UffdFaultsServed      uint64  `json:"uffd_faults_served"`        // page faults the page server answered
	UffdFaultPages        uint64  `json:"uffd_fault_pages"`          // pages installed to answer faults
	ClockJumpMaxMS        float64 `json:"clock_jump_max_ms"`         // largest change of realtime-monotonic across a restore
	TickGapMaxMS          float64 `json:"tick_gap_max_ms"`           // largest monotonic gap between ticks across a restore
	TemplateTickAtSnp     int     `json:"template_tick_at_snap"`     // last tick printed before the snapshot
	VsockGuestToHostMiBps float64 `json:"vsock_guest_to_host_mib_s"` // guest-initiated connection, one payload
	AgentProtocol         int     `json:"agent_protocol"`            // the guest agent's protocol version, once it answered
	VsockEchoMiBps        float64 `json:"vsock_echo_mib_s"`          // host-initiated, payload out and back, both counted
}

type config struct {
	vmm, kernel, initrd, disk, results, work string
	steps                                    string
	vcpus, memMiB                            int
	timeout                                  time.Duration
}

func main() {
	var c config
	flag.StringVar(&c.vmm, "vmm", "./thaw-vmm", "thaw-vmm binary")
	flag.StringVar(&c.kernel, "kernel", "./vmlinux", "guest kernel (ELF vmlinux)")
	flag.StringVar(&c.initrd, "initrd", "./initrd.cpio", "guest initramfs with guestinit as /init")
	flag.StringVar(&c.disk, "disk", "./disk.ext4", "ext4 image holding host.bin, for the devices step")
	flag.StringVar(&c.results, "results", os.Getenv("THAW_RESULTS"), "directory for linux.json and the serial logs")
	flag.StringVar(&c.work, "work", "", "directory for sockets and snapshot files (default: a new one under $TMPDIR)")
	flag.IntVar(&c.vcpus, "vcpus", 2, "guest vCPUs")
	flag.IntVar(&c.memMiB, "mem", 128, "guest memory in MiB")
	flag.StringVar(&c.steps, "steps", "", "comma-separated steps to run, in their usual order (default: all)")
	flag.DurationVar(&c.timeout, "step-timeout", 90*time.Second, "how long one guest step may take")
	flag.Parse()
	if c.results == "" {
		fmt.Fprintln(os.Stderr, "driver: -results (or THAW_RESULTS) must name a directory for the results")
		os.Exit(2)
	}
	if c.work == "" {
		dir, err := os.MkdirTemp("", "thaw-linux-")
		if err != nil {
			fmt.Fprintf(os.Stderr, "driver: %v\n", err)
			os.Exit(1)
		}
		defer os.RemoveAll(dir)
		c.work = dir
	}
	r := &Results{VCPUs: c.vcpus, MemMiB: c.memMiB}
	err := run(context.Background(), c, r)
	if werr := writeResults(c.results, r); werr != nil && err == nil {
		err = werr
	}
	var hang *hangError
	if errors.As(err, &hang) {
		fmt.Fprintf(os.Stderr, "driver: hang: %v\n", err)
		os.Exit(ExitHang)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "driver: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("driver: all steps passed: %v\n", r.Steps)
}

func writeResults(dir string, r *Results) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "linux.json"), append(data, '\n'), 0o644)
}

// ExitHang is the exit code for a step whose guest made no progress in time.
const ExitHang = 3

const cmdline = "console=ttyS0 reboot=k panic=1 pci=off"

// fast is what the template and devices boots add to cmdline: no kernel
// log on the console (each byte is an exit, most of a boot under nested
// virtualisation), Firecracker's recommended i8042 settings (the probe of
// a keyboard controller that only resets costs timeouts) and one UART
// instead of four probed.
const fast = "quiet i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1"

var (
	readyRE = regexp.MustCompile(`thaw-guestinit: ready uptime=([0-9.]+)`)
	tickRE  = regexp.MustCompile(`thaw-guestinit: tick (\d+) mono=(\d+) real=(\d+)\r?\n`)
)

func run(ctx context.Context, c config, r *Results) error {
	steps := []struct {
		name string
		fn   func(context.Context, config, *Results) error
	}{
		{"boot", bootAndReboot},
		{"devices", devicesStep},
		{"snapshot+restore", snapshotAndRestore},
	}
	want := map[string]bool{}
	if c.steps != "" {
		known := map[string]bool{}
		for _, s := range steps {
			known[s.name] = true
		}
		for _, name := range strings.Split(c.steps, ",") {
			if !known[name] {
				return fmt.Errorf("-steps %q: no step named %q (the steps are boot, devices, snapshot+restore)", c.steps, name)
			}
			want[name] = true
		}
	}
	for _, s := range steps {
		if c.steps != "" && !want[s.name] {
			continue
		}
		fmt.Printf("driver: step %s\n", s.name)
		if err := s.fn(ctx, c, r); err != nil {
			return fmt.Errorf("step %s: %w", s.name, err)
		}
		r.Steps = append(r.Steps, s.name)
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// boot configures v as a fresh guest with args added to the kernel command
// line (thaw.then= tells init what to do), and starts it.
func boot(ctx context.Context, v *vm, c config, args string) (time.Time, error) {
	if err := v.client.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: c.kernel, InitrdPath: c.initrd, BootArgs: cmdline + " " + args}); err != nil {
		return time.Time{}, err
	}
	if err := v.client.PutMachineConfig(ctx, fcapi.MachineConfig{VcpuCount: c.vcpus, MemSizeMib: c.memMiB}); err != nil {
		return time.Time{}, err
	}
	start := time.Now()
	return start, v.client.InstanceStart(ctx)
}

// bootAndReboot boots to init's marker; init reboots at once, which must
// end thaw-vmm with exit code 0.
func bootAndReboot(ctx context.Context, c config, r *Results) error {
	v, err := startVM(ctx, c.vmm, c.work, c.results, "boot")
	if err != nil {
		return err
	}
	defer v.kill()
	start, err := boot(ctx, v, c, "thaw.then=reboot")
	if err != nil {
		return err
	}
	m, err := v.waitFor(readyRE, c.timeout)
	if err != nil {
		return err
	}
	marker := time.Now()
	r.BootToMarkerMS = ms(marker.Sub(start))
	r.GuestUptimeS, _ = strconv.ParseFloat(m[1], 64)
	fmt.Printf("driver: InstanceStart → init marker %.0f ms (guest uptime %s s)\n", r.BootToMarkerMS, m[1])
	if err := v.wait(c.timeout); err != nil {
		return fmt.Errorf("after the guest rebooted: %w", err)
	}
	r.RebootToExitMS = ms(time.Since(marker))
	return nil
}

// tick is one line of guestinit's ticker.
type tick struct {
	n          int
	mono, real int64
}

func ticks(out string) []tick {
	var ts []tick
	for _, m := range tickRE.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[1])
		mono, _ := strconv.ParseInt(m[2], 10, 64)
		real, _ := strconv.ParseInt(m[3], 10, 64)
		ts = append(ts, tick{n, mono, real})
	}
	return ts
}

func tickRegexp(n int) *regexp.Regexp {
	return regexp.MustCompile(`thaw-guestinit: tick ` + strconv.Itoa(n) + ` mono=`)
}

// snapshotAndRestore boots a ticking guest, snapshots it, and restores it
// with each memory backend.
func snapshotAndRestore(ctx context.Context, c config, r *Results) error {
	statePath, memPath := filepath.Join(c.work, "vmstate"), filepath.Join(c.work, "mem")
	last, err := makeSnapshot(ctx, c, r, statePath, memPath)
	if err != nil {
		return err
	}
	for _, backend := range []fcapi.MemBackendType{fcapi.MemBackendFile, fcapi.MemBackendUffd} {
		if err := restore(ctx, c, r, backend, statePath, memPath, last); err != nil {
			return fmt.Errorf("restore with %s: %w", backend, err)
		}
	}
	return nil
}

// makeSnapshot boots the template with the fast arguments and a ticking
// init, pauses it after its fifth tick, writes a Full snapshot and checks
// nothing was printed while paused; then it resumes the template, which
// must go on ticking and reboot on console input. It returns the last
// tick printed before the snapshot.
func makeSnapshot(ctx context.Context, c config, r *Results, statePath, memPath string) (tick, error) {
	v, err := startVM(ctx, c.vmm, c.work, c.results, "template")
	if err != nil {
		return tick{}, err
	}
	defer v.kill()
	uds := filepath.Join(c.work, "template.vsock")
	if err := v.client.PutVsock(ctx, fcapi.Vsock{GuestCID: 3, UDSPath: uds}); err != nil {
		return tick{}, err
	}
	start, err := boot(ctx, v, c, fast+" thaw.vsock=listen thaw.agent=1 thaw.then=tick")
	if err != nil {
		return tick{}, err
	}
	if _, err := v.waitFor(readyRE, c.timeout); err != nil {
		return tick{}, err
	}
	if _, err := v.waitFor(regexp.MustCompile(`thaw-guestinit: vsock listening`), c.timeout); err != nil {
		return tick{}, err
	}
	// The agent must be serving when the snapshot is taken, so that a
	// clone's agent is up from its first instruction.
	if _, err := agentHealth(ctx, uds); err != nil {
		return tick{}, fmt.Errorf("template's thaw-agent: %w", err)
	}
	r.FastBootToMarkerMS = ms(time.Since(start))
	fmt.Printf("driver: InstanceStart → init marker %.0f ms with %q\n", r.FastBootToMarkerMS, fast)
	if _, err := v.waitFor(tickRegexp(5), c.timeout); err != nil {
		return tick{}, err
	}
	t0 := time.Now()
	if err := v.client.Pause(ctx); err != nil {
		return tick{}, err
	}
	r.PauseMS = ms(time.Since(t0))
	// Output written before the pause may still be in the pipe.
	time.Sleep(200 * time.Millisecond)
	ts := ticks(v.output())
	last := ts[len(ts)-1]
	t0 = time.Now()
	if err := v.client.CreateSnapshot(ctx, fcapi.SnapshotCreateParams{SnapshotType: fcapi.SnapshotFull, SnapshotPath: statePath, MemFilePath: memPath}); err != nil {
		return tick{}, err
	}
	r.SnapshotCreateMS = ms(time.Since(t0))
	r.TemplateTickAtSnp = last.n
	if st, err := os.Stat(memPath); err == nil {
		r.MemFileMiB = float64(st.Size()) / (1 << 20)
	}
	if after := ticks(v.output()); after[len(after)-1] != last {
		return tick{}, fmt.Errorf("the guest printed tick %d while paused (last before the snapshot: %d)", after[len(after)-1].n, last.n)
	}
	fmt.Printf("driver: paused at tick %d, Full snapshot %.0f ms, memory file %.0f MiB\n", last.n, r.SnapshotCreateMS, r.MemFileMiB)
	// The template itself resumes and reboots on console input.
	if err := v.client.Resume(ctx); err != nil {
		return tick{}, err
	}
	if _, err := v.waitFor(tickRegexp(last.n+1), c.timeout); err != nil {
		return tick{}, fmt.Errorf("after resuming the template: %w", err)
	}
	if err := rebootByConsole(v, c.timeout); err != nil {
		return tick{}, fmt.Errorf("template: %w", err)
	}
	return last, nil
}

func rebootByConsole(v *vm, timeout time.Duration) error {
	if _, err := v.stdin.Write([]byte("reboot\n")); err != nil {
		return fmt.Errorf("writing to the console: %w", err)
	}
	if _, err := v.waitFor(regexp.MustCompile(`thaw-guestinit: rebooting on request`), timeout); err != nil {
		return err
	}
	return v.wait(timeout)
}

// restore loads the snapshot into a fresh thaw-vmm and checks the guest
// carries on from tick last.
func restore(ctx context.Context, c config, r *Results, backend fcapi.MemBackendType, statePath, memPath string, last tick) error {
	mb := &fcapi.MemBackend{BackendType: backend, BackendPath: memPath}
	var ps *pageServer
	if backend == fcapi.MemBackendUffd {
		var err error
		if ps, err = startPageServer(ctx, filepath.Join(c.work, "uffd.sock"), memPath); err != nil {
			return err
		}
		defer ps.stop()
		mb.BackendPath = ps.sock
	}
	v, err := startVM(ctx, c.vmm, c.work, c.results, "restore-"+string(backend))
	if err != nil {
		return err
	}
	defer v.kill()
	// Each clone gets its own vsock socket; the template's may still exist.
	uds := filepath.Join(c.work, "clone-"+string(backend)+".vsock")
	t0 := time.Now()
	load := fcapi.SnapshotLoadParams{SnapshotPath: statePath, MemBackend: mb, ResumeVM: true, VsockOverride: &fcapi.VsockOverride{UDSPath: uds}}
	if err := v.client.LoadSnapshot(ctx, load); err != nil {
		return err
	}
	loadMS := ms(time.Since(t0))
	// The agent's listener was in the snapshot; the clone's vsock device
	// must reach it through the clone's own socket. Poll for its health
	// from the load on, as thawd would, while the ticks are checked.
	type healthResult struct {
		h   agentapi.Health
		at  time.Duration
		err error
	}
	healthc := make(chan healthResult, 1)
	hctx, hcancel := context.WithCancel(ctx)
	defer hcancel() // an early return stops the polling
	go func() {
		h, err := agentHealth(hctx, uds)
		healthc <- healthResult{h, time.Since(t0), err}
	}()
	m, err := v.waitFor(tickRE, c.timeout)
	if err != nil {
		return err
	}
	first := ms(time.Since(t0))
	n, _ := strconv.Atoi(m[1])
	if _, err := v.waitFor(tickRegexp(n+2), c.timeout); err != nil {
		return err
	}
	ts := ticks(v.output())
	// The first complete line is last+1, or last+2 when the snapshot caught
	// last+1's line half-sent: its first bytes left through the template's
	// UART and only its tail is the clone's to print.
	if ts[0].n != last.n+1 && !(ts[0].n == last.n+2 && !strings.HasPrefix(v.output(), "thaw-guestinit: tick")) {
		return fmt.Errorf("first tick after restore: got %d, want %d (the ticker process must continue, not restart); output:\n%s", ts[0].n, last.n+1, tail(v.output()))
	}
	if readyRE.MatchString(v.output()) {
		return fmt.Errorf("the restored guest booted again:\n%s", tail(v.output()))
	}
	prev := last
	for _, t := range ts {
		gap := time.Duration(t.mono - prev.mono)
		jump := time.Duration((t.real - t.mono) - (prev.real - prev.mono))
		if gap <= 0 || gap > 30*time.Second {
			return fmt.Errorf("tick %d: CLOCK_MONOTONIC moved %v since tick %d, want a small positive step", t.n, gap, prev.n)
		}
		if jump < -time.Second || jump > time.Second {
			return fmt.Errorf("tick %d: CLOCK_REALTIME jumped %v against CLOCK_MONOTONIC since tick %d", t.n, jump, prev.n)
		}
		r.TickGapMaxMS = max(r.TickGapMaxMS, ms(gap))
		r.ClockJumpMaxMS = max(r.ClockJumpMaxMS, ms(jump.Abs()))
		prev = t
	}
	var hr healthResult
	select {
	case hr = <-healthc:
	case <-v.done:
		return fmt.Errorf("waiting for the restored thaw-agent: thaw-vmm exited (%v); output:\n%s", v.err, tail(v.output()))
	}
	if hr.err != nil {
		return fmt.Errorf("restored thaw-agent on %s: %w", uds, hr.err)
	}
	h, healthy := hr.h, ms(hr.at)
	// A new host-initiated connection to the guest's echo listener: the
	// transport was reset by the restore, the listener must survive it.
	echoMiBps, err := echo(ctx, uds)
	if err != nil {
		return fmt.Errorf("host-initiated vsock after restore: %w", err)
	}
	if err := rebootByConsole(v, c.timeout); err != nil {
		return err
	}
	switch backend {
	case fcapi.MemBackendFile:
		r.FileLoadMS, r.FileFirstTickMS, r.FileAgentHealthyMS, r.FileEchoMiBps = loadMS, first, healthy, echoMiBps
	case fcapi.MemBackendUffd:
		r.UffdLoadMS, r.UffdFirstTickMS, r.UffdAgentHealthyMS, r.UffdEchoMiBps = loadMS, first, healthy, echoMiBps
		st := ps.stop()
		if st.err != nil && !errors.Is(st.err, context.Canceled) {
			return fmt.Errorf("page server: %w", st.err)
		}
		r.UffdFaultsServed, r.UffdFaultPages = st.stats.Faults, st.stats.FaultPages
	}
	fmt.Printf("driver: %s restore: load %.1f ms, first tick %.0f ms after the load call; ticks %d..%d continue; agent (protocol %d) healthy %.0f ms after the load call; new vsock connection echoed at %.1f MiB/s\n",
		backend, loadMS, first, ts[0].n, ts[len(ts)-1].n, h.Protocol, healthy, echoMiBps)
	return nil
}
