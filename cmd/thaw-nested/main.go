// Command thaw-nested runs a payload directory inside the nested harness's L1
// (QEMU software emulation with emulated AMD SVM, Debian's cloud kernel with
// its own kvm-amd) and exits with the payload's exit code. Its output goes to
// stdout; the files it wrote to $THAW_RESULTS are copied to -out.
//
//	thaw-nested -payload DIR [-auto] [-out DIR] [-console] [-shell] [-cpus 2] [-mem 2048]
//	            [-boot-timeout 3m] [-setup-timeout 2m] [-timeout 10m] [-shutdown-timeout 1m]
//	            [-nested-paging]
//
// -auto runs the payload directly instead when the host's /dev/kvm runs
// normal Linux guests (hardware KVM), and logs which path it took.
// L1's kvm_amd uses shadow paging (npt=0) unless -nested-paging (or
// THAW_NESTED_PAGING=1) keeps nested paging; the log says which it used.
// -shell drops into an L1 shell on this terminal after the payload (or after
// a setup error), for debugging. Installs its Debian packages through
// scripts/setup when run from the repository and they are missing. Exits
// 125 when the harness itself fails (a hang, a setup error), saying which
// step and where the serial log is.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/thawvm/thaw/internal/conf"
	"github.com/thawvm/thaw/internal/nested"
)

func main() {
	code, err := run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "thaw-nested:", err)
		os.Exit(125)
	}
	os.Exit(code)
}

func run() (int, error) {
	var cfg nested.Config
	var payload, out, work string
	var console, auto bool
	flag.StringVar(&payload, "payload", "", "payload directory with an executable run script (required)")
	flag.StringVar(&out, "out", "", "copy the payload's result files here")
	flag.StringVar(&work, "work", "", "keep disks and serial logs here (default: a temporary directory, removed on success)")
	flag.BoolVar(&auto, "auto", false, "run directly when this host's KVM runs normal Linux guests, nested otherwise")
	flag.BoolVar(&console, "console", false, "show L1's serial console on stderr as it runs")
	flag.BoolVar(&cfg.Shell, "shell", false, "give an L1 shell on this terminal after the payload")
	flag.StringVar(&cfg.CacheDir, "cache", "", "cache directory (default /var/cache/thaw/nested)")
	flag.IntVar(&cfg.CPUs, "cpus", 0, "L1 vCPUs (default 2)")
	flag.IntVar(&cfg.MemoryMiB, "mem", 0, "L1 memory in MiB (default 2048)")
	flag.IntVar(&cfg.Attempts, "attempts", 0, "boots to try when a step hangs (default 2)")
	flag.DurationVar(&cfg.Timeouts.Boot, "boot-timeout", 0, "QEMU start → L1 init (default 3m)")
	flag.DurationVar(&cfg.Timeouts.Setup, "setup-timeout", 0, "L1 init → payload start (default 2m)")
	flag.DurationVar(&cfg.Timeouts.Payload, "timeout", 0, "the payload's run (default 10m)")
	flag.DurationVar(&cfg.Timeouts.Shutdown, "shutdown-timeout", 0, "payload exit → QEMU exit (default 1m)")
	npt, err := conf.EnvBool(nested.NestedPagingEnv, false)
	if err != nil {
		return 0, err
	}
	flag.BoolVar(&cfg.NestedPaging, "nested-paging", npt, "keep L1's kvm_amd with nested paging instead of shadow paging (npt=0); default from "+nested.NestedPagingEnv)
	flag.Parse()
	if payload == "" || flag.NArg() > 0 {
		flag.Usage()
		return 0, fmt.Errorf("want -payload DIR and no arguments")
	}
	if console || cfg.Shell {
		cfg.Console = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	if missing := nested.MissingTools(); len(missing) > 0 {
		if err := setup(); err != nil {
			return 0, fmt.Errorf("missing %v and %w", missing, err)
		}
	}
	h, err := nested.New(cfg, log)
	if err != nil {
		return 0, err
	}
	keep := work != ""
	if !keep {
		if work, err = os.MkdirTemp("", "thaw-nested-"); err != nil {
			return 0, err
		}
	} else if err := os.MkdirAll(work, 0o755); err != nil {
		return 0, err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	run := h.Run
	if auto {
		run = h.RunWhereGuestsRun
	}
	r, err := run(ctx, nested.Payload{Dir: payload}, work)
	if err != nil {
		if entries, _ := os.ReadDir(work); len(entries) == 0 {
			os.Remove(work) // failed before writing anything worth keeping
			return 0, err
		}
		return 0, fmt.Errorf("%w (disks and logs kept in %s)", err, work)
	}
	os.Stdout.Write(r.Output)
	if out != "" {
		if err := os.MkdirAll(out, 0o755); err != nil {
			return 0, err
		}
		// cp -a: out may be on another filesystem than the work directory.
		if b, err := exec.Command("cp", "-a", r.Files+"/.", out).CombinedOutput(); err != nil {
			return 0, fmt.Errorf("copying result files to %s: %w: %s", out, err, b)
		}
	}
	log.Info("payload finished", "exit", r.ExitCode, "attempts", r.Attempts, "paging", r.Paging,
		"kvm_ready", r.KVMReady, "run", r.Run, "total", r.Total)
	if !keep {
		os.RemoveAll(work)
	}
	return r.ExitCode, nil
}

// setup runs the repository's scripts/setup, which installs the harness's
// Debian packages, when thaw-nested runs inside a checkout.
func setup() error {
	root, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		return fmt.Errorf("not in a Thaw checkout to run scripts/setup from: install the packages in scripts/apt-packages")
	}
	cmd := exec.Command(filepath.Join(string(root[:len(root)-1]), "scripts", "setup"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("scripts/setup: %w", err)
	}
	return nil
}
