// Command thaw-vmm is Thaw's own KVM virtual machine monitor: one process
// per microVM, driven through the subset of Firecracker's HTTP API that
// Thaw uses, with Firecracker's command-line flags, so the daemon cannot
// tell it from firecracker. The guest's serial console goes to stdout.
//
//	thaw-vmm --api-sock /run/vm.sock [--id vm1]
//	thaw-vmm --no-api --config-file vm.json
//
// It exits 0 when the guest shuts down or resets (as Firecracker does) or
// on SIGINT/SIGTERM, and 1 when the VM fails or the configuration is bad.
// THAW_VMM_XSAVE=false hides XSAVE and AVX from the guest;
// THAW_VMM_SHUTDOWN_DUMP=<file> writes guest memory there if the guest
// triple-faults (see internal/vmm/process). The VMM itself is
// internal/vmm/process, which thaw-shim also runs inside itself.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"github.com/thawvm/thaw/internal/conf"
	"github.com/thawvm/thaw/internal/fcapi"
	"github.com/thawvm/thaw/internal/vmm"
	"github.com/thawvm/thaw/internal/vmm/process"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// options are the command-line flags, spelled as Firecracker's.
type options struct {
	apiSock    string
	configFile string
	noAPI      bool
	id         string
	level      string
	logPath    string
	noSeccomp  bool
	seccomp    string
	bootTimer  bool
	version    bool
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("thaw-vmm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.apiSock, "api-sock", "/run/firecracker.socket", "path of the unix socket the API is served on")
	fs.StringVar(&o.configFile, "config-file", "", "Firecracker JSON configuration to boot from without API calls")
	fs.BoolVar(&o.noAPI, "no-api", false, "serve no API (needs --config-file)")
	fs.StringVar(&o.id, "id", "anonymous-instance", "microVM identifier reported by GET /")
	fs.StringVar(&o.level, "level", "Info", "log level: Off, Error, Warning, Info, Debug or Trace")
	fs.StringVar(&o.logPath, "log-path", "", "append logs to this file instead of stderr")
	fs.BoolVar(&o.noSeccomp, "no-seccomp", false, "accepted for compatibility: thaw-vmm installs no seccomp filter")
	fs.StringVar(&o.seccomp, "seccomp-filter", "", "not supported: thaw-vmm installs no seccomp filter")
	fs.BoolVar(&o.bootTimer, "boot-timer", false, "not supported: there is no boot timer device")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q: thaw-vmm takes flags only", fs.Args())
	}
	if o.noAPI && o.configFile == "" {
		return o, errors.New("--no-api needs --config-file: without the API, the configuration must come from a file")
	}
	if o.seccomp != "" {
		return o, errors.New("--seccomp-filter is not supported: thaw-vmm installs no seccomp filter (use --no-seccomp)")
	}
	if o.bootTimer {
		return o, errors.New("--boot-timer is not supported: thaw-vmm has no boot timer device")
	}
	if err := fcapi.CheckID(strings.ReplaceAll(o.id, "-", "_")); err != nil {
		return o, fmt.Errorf("--id: %w (hyphens are allowed too)", err)
	}
	return o, nil
}

func logLevel(s string) (slog.Level, bool, error) {
	switch strings.ToLower(s) {
	case "off":
		return 0, false, nil
	case "error":
		return slog.LevelError, true, nil
	case "warning", "warn":
		return slog.LevelWarn, true, nil
	case "info":
		return slog.LevelInfo, true, nil
	case "debug", "trace":
		return slog.LevelDebug, true, nil
	}
	return 0, false, fmt.Errorf("--level %q: want Off, Error, Warning, Info, Debug or Trace", s)
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "thaw-vmm: %v\n", err)
		return 1
	}
	if o.version {
		fmt.Fprintf(stdout, "thaw-vmm v%s\n", process.Version)
		return 0
	}
	level, on, err := logLevel(o.level)
	if err != nil {
		fmt.Fprintf(stderr, "thaw-vmm: %v\n", err)
		return 1
	}
	logOut := stderr
	if o.logPath != "" {
		f, err := os.OpenFile(o.logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			fmt.Fprintf(stderr, "thaw-vmm: --log-path: %v\n", err)
			return 1
		}
		defer f.Close()
		logOut = f
	}
	if !on {
		logOut = io.Discard
	}
	log := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: level})).With("vm", o.id)

	if err := serve(o, stdout, log); err != nil {
		log.Error("thaw-vmm failed", "err", err)
		fmt.Fprintf(stderr, "thaw-vmm: %v\n", err)
		return 1
	}
	return 0
}

// serve runs the VMM (internal/vmm/process) until the guest ends, a
// signal arrives or the API server fails.
func serve(o options, stdout io.Writer, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	xsave, err := conf.EnvBool(process.XSAVEEnv, true)
	if err != nil {
		return err
	}
	if !xsave {
		log.Info("hiding XSAVE and AVX from the guest", "env", process.XSAVEEnv)
	}
	cfg := process.Config{ID: o.id, Serial: stdout, NoXSAVE: !xsave, ShutdownDump: os.Getenv(process.ShutdownDumpEnv)}
	if !o.noAPI {
		cfg.APISocket = o.apiSock
	}
	if o.configFile != "" {
		if cfg.Boot, err = readConfig(o.configFile); err != nil {
			return err
		}
	}
	// GOMAXPROCS set in the environment is left alone; otherwise the
	// instance sizes it to the VM, never above the runtime's default.
	if os.Getenv("GOMAXPROCS") == "" {
		cfg.MaxProcs = runtime.GOMAXPROCS(0)
	}
	in, err := process.Start(ctx, cfg, log)
	if err != nil {
		return err
	}
	go forwardInput(os.Stdin, in.Machine(), log)
	select {
	case <-in.Done():
	case <-ctx.Done():
		log.Info("signal received, stopping")
		in.Stop()
	}
	end, _ := in.Wait(context.Background())
	return end.Err
}

func readConfig(path string) (*fcapi.VMConfig, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--config-file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, fcapi.MaxConfigFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("--config-file %s: %w", path, err)
	}
	if len(data) > fcapi.MaxConfigFileSize {
		return nil, fmt.Errorf("--config-file %s is larger than %d bytes", path, fcapi.MaxConfigFileSize)
	}
	cfg, err := fcapi.ParseConfigFile(data)
	if err != nil {
		return nil, fmt.Errorf("--config-file %s: %w", path, err)
	}
	return cfg, nil
}

// forwardInput copies the VMM's stdin to the guest's serial port, as
// Firecracker does. Input that arrives while no guest runs is dropped. The
// goroutine ends at EOF (stdin is /dev/null when a daemon starts the VMM)
// or with the process.
func forwardInput(in io.Reader, m *vmm.Machine, log *slog.Logger) {
	buf := make([]byte, 4096)
	for {
		n, err := in.Read(buf)
		if n > 0 {
			if ierr := m.SerialInput(buf[:n]); ierr != nil {
				log.Debug("dropping serial input", "bytes", n, "err", ierr)
			}
		}
		if err != nil {
			return
		}
	}
}
