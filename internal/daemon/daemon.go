// Package daemon is thawd as a library: Run loads the configuration,
// prepares the data directory, refuses a filesystem that cannot reflink
// sandbox disks, opens the state store and serves the API until its context
// ends. cmd/thawd and the CLI's "thaw daemon" both call it.
package daemon

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/thawvm/thaw/internal/daemon/api"
	"github.com/thawvm/thaw/internal/daemon/config"
	"github.com/thawvm/thaw/internal/daemon/disk"
	"github.com/thawvm/thaw/internal/daemon/layout"
	"github.com/thawvm/thaw/internal/daemon/live"
	"github.com/thawvm/thaw/internal/daemon/metrics"
	"github.com/thawvm/thaw/internal/daemon/sandbox"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/daemon/template"
)

// Version is thawd's version, set at link time
// (-ldflags "-X github.com/thawvm/thaw/internal/daemon.Version=...").
var Version = "dev"

// Run is thawd from its inputs to its exit: args are the command-line
// arguments without the program name, lookup and environ the environment
// (os.LookupEnv, os.Environ), stderr receives the log and flag errors. it returns when ctx ends (after
// shutting the API down) or when starting fails.
func Run(ctx context.Context, args []string, lookup func(string) (string, bool), environ []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("thawd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg, err := config.Load(fs, args, lookup)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	for _, name := range config.UnknownEnv(environ) {
		log.Warn("ignoring unknown environment variable (a typo?)", "name", name)
	}

	lay, err := layout.New(cfg.DataDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(lay.Root(), 0o700); err != nil {
		return fmt.Errorf("creating data directory: %w", err)
	}
	if err := disk.Probe(lay.Root()); err != nil {
		return fmt.Errorf("data directory %s: %w", lay.Root(), err)
	}
	// The store's lock makes this thawd the data directory's only user;
	// only then may Init clear what a previous run left in tmp.
	st, err := store.Open(lay.Store(), store.Options{Logger: log})
	if err != nil {
		return err
	}
	defer st.Close()
	if err := lay.Init(); err != nil {
		return err
	}
	// Builds run inside thawd: one still "building" was cut off when the
	// previous thawd ended.
	if n, err := st.FailInterruptedBuilds("interrupted: thawd stopped during the build"); err != nil {
		return err
	} else if n > 0 {
		log.Warn("marked interrupted template builds failed", "builds", n)
	}
	settings, err := live.New(cfg)
	if err != nil {
		return err
	}
	met := metrics.New(st, settings)
	var mgr *sandbox.Manager
	shimBin, serr := resolveBinary(cfg.Shim)
	vmmBin, verr := cfg.VMM, error(nil)
	if vmmBin != config.BuiltinVMM {
		vmmBin, verr = resolveBinary(cfg.VMM)
	}
	if serr != nil || verr != nil {
		// thawd still serves what it has (records, templates, settings);
		// the sandbox routes answer "unavailable" and say why.
		log.Warn("no sandbox lifecycle: binaries not found", "shim", serr, "vmm", verr)
	} else {
		mgr, err = sandbox.New(sandbox.Options{Store: st, Layout: lay, Settings: settings, Observer: met, Logger: log,
			Shim: shimBin, VMM: vmmBin, Prefetch: cfg.UFFDPrefetch, PrefetchRate: uint64(cfg.UFFDPrefetchRate), ShimProcs: cfg.ShimProcs, RecordMax: cfg.UFFDRecordMax, LoadTimeout: cfg.LoadTimeout,
			ReadyTimeout: cfg.ReadyTimeout, MaxActions: cfg.ReconcileMaxActions, UnresponsiveLimit: cfg.ShimUnresponsiveLimit})
		if err != nil {
			return err
		}
		met.SetPageSource(mgr.PageStats)
		// Re-attach to the shims that outlived the previous thawd before
		// serving: every record then says what is really running.
		plan, err := mgr.Reconcile(ctx, true)
		if err != nil {
			log.Error("reconciling at start", "err", err)
		}
		log.Info("reconciled at start", "actions", len(plan.Actions), "deferred", len(plan.Deferred))
	}
	var builds *template.Runs
	if mgr != nil {
		b := &template.Builder{Store: st, Layout: lay, Kernel: cfg.KernelPath(), Agent: cfg.AgentPath(),
			Boot: mgr.BootSnapshot, Record: mgr.RecordFunc()}
		bctx, stopBuilds := context.WithCancel(context.WithoutCancel(ctx))
		builds = template.NewRuns(bctx, b, log)
		// A build cut off by the stop still stops its VM before thawd
		// exits: nothing else would (build VMs are never stored).
		defer func() { stopBuilds(); builds.Wait() }()
	}
	srv, err := api.New(api.Options{Store: st, Layout: lay, Settings: settings, Logger: log, Version: Version,
		Metrics: met.Handler(), Sandboxes: mgr, Builds: builds})
	if err != nil {
		return err
	}
	if mgr != nil {
		rctx, stopReconciler := context.WithCancel(ctx)
		reconciled := make(chan struct{})
		go func() { defer close(reconciled); mgr.Run(rctx, cfg.ReconcileInterval) }()
		defer func() { stopReconciler(); <-reconciled }()
	}

	var servers []*http.Server
	serveErr := make(chan error, 2)
	serve := func(h http.Handler, l net.Listener) {
		hs := api.NewHTTPServer(h)
		servers = append(servers, hs)
		go func() { serveErr <- hs.Serve(l) }()
	}
	ul, err := api.ListenUnix(cfg.Socket)
	if err != nil {
		return err
	}
	serve(srv, ul)
	if cfg.TCPAddr != "" {
		token, err := api.LoadToken(cfg.TokenFile)
		if err != nil {
			shutdown(servers)
			return err
		}
		h, err := srv.RequireToken(token, srv)
		if err != nil {
			shutdown(servers)
			return err
		}
		tl, err := net.Listen("tcp", cfg.TCPAddr)
		if err != nil {
			shutdown(servers)
			return fmt.Errorf("listening on %s: %w", cfg.TCPAddr, err)
		}
		serve(h, tl)
	}
	log.Info("thawd serving", "version", Version, "socket", cfg.Socket, "tcp", cfg.TCPAddr, "data", lay.Root(),
		"uffd", cfg.UFFD, "max_concurrent_restores", cfg.MaxConcurrentRestores)

	select {
	case <-ctx.Done():
		log.Info("thawd stopping")
		shutdown(servers)
		return nil
	case err := <-serveErr:
		shutdown(servers)
		return fmt.Errorf("serving the API: %w", err)
	}
}

// shutdown stops the API servers, giving requests in flight a few seconds.
func shutdown(servers []*http.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, hs := range servers {
		hs.Shutdown(ctx)
	}
}

// resolveBinary finds a helper binary: an absolute path as given, else in
// PATH, else next to thawd's own executable (where the release puts them).
func resolveBinary(name string) (string, error) {
	if filepath.IsAbs(name) {
		if _, err := os.Stat(name); err != nil {
			return "", err
		}
		return name, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return filepath.Abs(p)
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not an absolute path, not in PATH and not next to thawd", name)
}
