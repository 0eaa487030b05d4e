// Package nested runs test payloads next to a real KVM on machines whose own
// /dev/kvm cannot run a normal Linux guest (kvm_pvm runs only PVM-built
// kernels). It boots Debian's stock cloud kernel as L1 under QEMU in software
// emulation with an emulated AMD SVM CPU, loads L1's own kvm-amd, and runs
// the payload there with a real /dev/kvm; the payload's exit code, output
// and result files come back to the host.
//
// A payload is a directory with an executable "run". The harness copies it
// onto an ext4 disk (mounted read-only at /payload in L1), gives it an empty
// results disk (THAW_RESULTS, read back with debugfs), and times each step
// of L1's life by marker lines on the serial console, so a hang names its
// step. A hang is retried once: about one run in eight hangs in TCG.
//
// Everything slow is cached under Config.CacheDir, keyed by content: the L1
// kernel package by its archive SHA256, the initramfs by the hash of every
// byte in it. The Test helper picks the direct path instead on hosts whose
// KVM runs normal guests.
package nested

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Steps of an L1 run, in order; a HangError names the one that timed out.
const (
	StepBoot     = "boot"     // QEMU start → the L1 init runs
	StepSetup    = "setup"    // modules, /dev/kvm, disks mounted
	StepPayload  = "payload"  // the payload's run script
	StepShutdown = "shutdown" // results unmounted → QEMU exits
)

// Timeouts bound each step of an L1 run. The defaults are generous because
// the machines are shared and TCG is slow under contention.
type Timeouts struct {
	Boot, Setup, Payload, Shutdown time.Duration
}

// Config configures a Harness. The zero value of each field means its
// default.
type Config struct {
	// CacheDir holds the L1 kernel and initramfs; default /var/cache/thaw/nested.
	CacheDir string
	// QEMU is the emulator binary; default qemu-system-x86_64.
	QEMU string
	// CPUs and MemoryMiB size L1; defaults 2 and 2048.
	CPUs, MemoryMiB int
	// Timeouts per step; defaults 3m boot, 2m setup, 10m payload, 1m shutdown.
	Timeouts Timeouts
	// Attempts is how many times a run that hangs is tried; default 2.
	Attempts int
	// Shell gives an interactive L1 shell on the console after the payload
	// (or after a setup error) when true; for people debugging, with the
	// console on Console. Step timeouts stop once the shell starts.
	Shell bool
	// Console, if set, receives L1's serial console as it happens.
	Console io.Writer
	// NestedPaging keeps L1's kvm_amd with nested paging (NPT). By default
	// L1 loads it with npt=0 (shadow paging): QEMU 7.2 TCG's emulated SVM
	// hands L2 guests spurious instruction-fetch page faults under nested
	// paging, which triple-fault Linux guests (docs/testing.md). Set it to
	// compare the two, or to check a newer QEMU; NestedPagingEnv sets it
	// in Test and thaw-nested.
	NestedPaging bool
}

// Paging modes of L1's KVM, as Result.Paging reports them.
const (
	PagingShadow = "shadow" // kvm_amd npt=0: L1's KVM walks the guest's page tables
	PagingNested = "nested" // kvm_amd npt=1: the (emulated) CPU walks both levels
)

// paging is the mode the configuration asks L1's KVM for.
func (c *Config) paging() string {
	if c.NestedPaging {
		return PagingNested
	}
	return PagingShadow
}

func (c *Config) setDefaults() {
	if c.CacheDir == "" {
		c.CacheDir = "/var/cache/thaw/nested"
	}
	if c.QEMU == "" {
		c.QEMU = "qemu-system-x86_64"
	}
	if c.CPUs == 0 {
		c.CPUs = 2
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = 2048
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.Timeouts.Boot, 3*time.Minute)
	def(&c.Timeouts.Setup, 2*time.Minute)
	def(&c.Timeouts.Payload, 10*time.Minute)
	def(&c.Timeouts.Shutdown, time.Minute)
	if c.Attempts == 0 {
		c.Attempts = 2
	}
}

// Validate reports a configuration the harness cannot use.
func (c *Config) Validate() error {
	switch {
	case !filepath.IsAbs(c.CacheDir):
		return fmt.Errorf("cache directory %q: want an absolute path", c.CacheDir)
	case c.CPUs < 1 || c.CPUs > 16:
		return fmt.Errorf("L1 CPUs %d: want 1 to 16", c.CPUs)
	case c.MemoryMiB < 256:
		return fmt.Errorf("L1 memory %d MiB: want at least 256", c.MemoryMiB)
	case c.Timeouts.Boot < 0 || c.Timeouts.Setup < 0 || c.Timeouts.Payload < 0 || c.Timeouts.Shutdown < 0:
		return fmt.Errorf("step timeouts %+v: want positive durations", c.Timeouts)
	case c.Attempts < 1:
		return fmt.Errorf("attempts %d: want at least 1", c.Attempts)
	}
	return nil
}

// Payload is what runs in L1.
type Payload struct {
	// Dir holds an executable "run" and anything it needs (static binaries,
	// a guest kernel, images). run gets /dev/kvm, its own directory as the
	// working directory, and THAW_RESULTS: a directory whose files come back.
	Dir string
	// Timeout overrides Config.Timeouts.Payload when non-zero.
	Timeout time.Duration
}

// Result is what came back from a payload run.
type Result struct {
	ExitCode int
	// Output is run's stdout and stderr, interleaved.
	Output []byte
	// Files is the host directory holding what run wrote to THAW_RESULTS.
	Files string
	// Nested is true when the payload ran in L1, false when it ran directly.
	Nested bool
	// Serial is the L1 serial console log of the last attempt.
	Serial string
	// Attempts is how many L1 boots it took (a hang is retried).
	Attempts int
	// Paging is the paging mode L1's KVM used (PagingShadow or
	// PagingNested); empty when the payload ran directly.
	Paging string
	// KVMReady is QEMU start → /dev/kvm ready in L1; Run is the payload's
	// own time; Total is everything, cache checks and retries included.
	KVMReady, Run, Total time.Duration
}

// HangError says which step of an L1 run made no progress in time.
type HangError struct {
	Step    string
	Timeout time.Duration
	Serial  string   // the serial log
	Tail    []string // its last lines
}

func (e *HangError) Error() string {
	return fmt.Sprintf("nested harness: step %q hung (no progress in %v); serial log %s ends:\n%s",
		e.Step, e.Timeout, e.Serial, strings.Join(e.Tail, "\n"))
}

// CrashError says L1 ended (QEMU exited, or L1's kernel powered off or
// panicked) before the payload finished. Like a hang, it is the emulation
// under the payload failing, not the payload, so Run retries it once.
type CrashError struct {
	Step string
	Err  error // QEMU's exit status; nil when L1 powered off cleanly
}

func (e *CrashError) Error() string {
	return fmt.Sprintf("L1 ended during step %q before the payload finished (QEMU: %v)", e.Step, e.Err)
}

// Harness boots L1s. It holds no processes between runs.
type Harness struct {
	cfg Config
	log *slog.Logger
}

// New returns a Harness for cfg (defaults filled in) after validating it.
func New(cfg Config, log *slog.Logger) (*Harness, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Harness{cfg: cfg, log: log}, nil
}

// tools are the host commands the harness runs, and the Debian packages
// (all in scripts/apt-packages) that provide them.
var tools = map[string]string{
	"qemu-system-x86_64": "qemu-system-x86",
	"cpio":               "cpio",
	"mkfs.ext4":          "e2fsprogs",
	"debugfs":            "e2fsprogs",
	"apt-get":            "apt",
	"dpkg-deb":           "dpkg",
}

// MissingTools lists the host commands the harness needs and cannot find,
// with the package to install; busybox-static's binary counts too.
func MissingTools() []string {
	var missing []string
	for cmd, pkg := range tools {
		if _, err := exec.LookPath(cmd); err != nil {
			missing = append(missing, fmt.Sprintf("%s (package %s)", cmd, pkg))
		}
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", "busybox-static").Output(); err != nil || !strings.Contains(string(out), "ok installed") {
		missing = append(missing, busybox+" (package busybox-static)")
	}
	return missing
}

// Run boots L1 with p, retrying once if a step hangs or L1 ends early, and returns what came
// back. workDir receives the disks, serial logs and result files; the
// caller owns it. A payload that exits non-zero is a Result, not an error.
func (h *Harness) Run(ctx context.Context, p Payload, workDir string) (*Result, error) {
	start := time.Now()
	if m := MissingTools(); len(m) > 0 {
		return nil, fmt.Errorf("nested harness needs %s: run scripts/setup", strings.Join(m, ", "))
	}
	if err := checkPayload(p.Dir); err != nil {
		return nil, err
	}
	k, initrd, err := h.prepare(ctx)
	if err != nil {
		return nil, err
	}
	size, err := payloadImageSize(p.Dir)
	if err != nil {
		return nil, err
	}
	payloadImg := filepath.Join(workDir, "payload.img")
	if err := makeExt4(ctx, payloadImg, p.Dir, size); err != nil {
		return nil, fmt.Errorf("building the payload disk: %w", err)
	}
	timeouts := h.cfg.Timeouts
	if p.Timeout != 0 {
		timeouts.Payload = p.Timeout
	}
	for attempt := 1; ; attempt++ {
		dir := filepath.Join(workDir, fmt.Sprintf("attempt-%d", attempt))
		r, err := h.boot(ctx, bootSpec{kernel: k.vmlinuz, initrd: initrd, payload: payloadImg, dir: dir, timeouts: timeouts})
		var (
			hang  *HangError
			crash *CrashError
		)
		if attempt < h.cfg.Attempts && ctx.Err() == nil {
			switch {
			case errors.As(err, &hang):
				h.log.Warn("L1 hung; retrying", "step", hang.Step, "attempt", attempt, "serial", hang.Serial)
				continue
			case errors.As(err, &crash):
				h.log.Warn("L1 ended early; retrying", "step", crash.Step, "qemu", crash.Err, "attempt", attempt)
				continue
			}
		}
		if err != nil {
			return nil, fmt.Errorf("attempt %d: %w", attempt, err)
		}
		r.Attempts = attempt
		r.Total = time.Since(start)
		return r, nil
	}
}

// prepare returns the L1 kernel and initramfs from the cache, filling it
// first if needed. A lock on the cache keeps concurrent test processes
// from unpacking over each other; it is held for milliseconds once warm.
func (h *Harness) prepare(ctx context.Context) (*l1Kernel, string, error) {
	if err := os.MkdirAll(h.cfg.CacheDir, 0o755); err != nil {
		return nil, "", fmt.Errorf("creating cache directory: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(h.cfg.CacheDir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, "", fmt.Errorf("opening the cache lock: %w", err)
	}
	defer lock.Close() // closing releases the lock
	if err := flock(lock); err != nil {
		return nil, "", fmt.Errorf("locking the cache %s: %w", h.cfg.CacheDir, err)
	}
	k, err := h.fetchL1Kernel(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("preparing the L1 kernel: %w", err)
	}
	initrd, err := h.initramfs(ctx, k)
	if err != nil {
		return nil, "", fmt.Errorf("building the L1 initramfs: %w", err)
	}
	return k, initrd, nil
}

// flock takes an exclusive lock on f, waiting for other holders.
func flock(f *os.File) error {
	conn, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var lerr error
	err = conn.Control(func(fd uintptr) {
		for {
			if lerr = unix.Flock(int(fd), unix.LOCK_EX); lerr != unix.EINTR {
				return
			}
		}
	})
	return errors.Join(err, lerr)
}

// checkPayload rejects a payload L1 could not run, before booting anything.
func checkPayload(dir string) error {
	st, err := os.Stat(filepath.Join(dir, "run"))
	if err != nil {
		return fmt.Errorf("payload %s: %w: a payload directory needs an executable run script", dir, err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("payload %s: run is not an executable file (mode %v): chmod +x it", dir, st.Mode())
	}
	return nil
}
