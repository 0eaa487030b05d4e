// Command thaw-agent is the agent inside every Thaw sandbox: the guest's
// PID 1, reached by thawd over vsock. It serves the protocol of
// internal/agentapi (exec, files, health, post-restore init).
//
// As PID 1 (the kernel runs it as /sbin/init, or as init=/sbin/thaw-agent on
// the kernel command line) it also mounts /proc, /sys, /dev, /dev/pts,
// /dev/shm, /tmp and /run, sets the hostname from /etc/hostname, reaps every
// orphan, forwards SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to the
// process groups it started, and shuts the guest down cleanly on POST
// /shutdown or Ctrl-Alt-Del (which the kernel turns into SIGINT; the guest
// then reboots, which Firecracker treats as the VM's exit).
//
// Usage:
//
//	thaw-agent [-listen vsock:10000 | -listen unix:/path] [-subreaper] [-log-level info]
//
// It must be built static: CGO_ENABLED=0 go build ./cmd/thaw-agent.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/agent"
	"github.com/thawvm/thaw/internal/agentapi"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type options struct {
	listen    string
	subreaper bool
	logLevel  slog.Level
	etc       string
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("thaw-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := options{}
	fs.StringVar(&o.listen, "listen", "vsock:"+strconv.Itoa(agentapi.DefaultVsockPort), "where to listen: vsock:PORT or unix:PATH")
	fs.BoolVar(&o.subreaper, "subreaper", false, "become a child subreaper and reap orphans (as PID 1 does); for running outside a VM")
	fs.StringVar(&o.etc, "etc", "/etc", "directory with passwd and group for user lookups")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if err := o.logLevel.UnmarshalText([]byte(*level)); err != nil {
		return o, fmt.Errorf("-log-level %q: use debug, info, warn or error", *level)
	}
	if _, _, err := splitListen(o.listen); err != nil {
		return o, err
	}
	return o, nil
}

// splitListen parses vsock:PORT or unix:PATH.
func splitListen(s string) (kind, where string, err error) {
	kind, where, ok := strings.Cut(s, ":")
	switch {
	case ok && kind == "unix" && where != "":
		return kind, where, nil
	case ok && kind == "vsock":
		if _, err := strconv.ParseUint(where, 10, 32); err == nil {
			return kind, where, nil
		}
	}
	return "", "", fmt.Errorf("-listen %q: use vsock:PORT (e.g. vsock:%d) or unix:PATH", s, agentapi.DefaultVsockPort)
}

func listen(s string) (net.Listener, error) {
	kind, where, err := splitListen(s)
	if err != nil {
		return nil, err
	}
	if kind == "unix" {
		os.Remove(where) // a stale socket from an earlier run
		return net.Listen("unix", where)
	}
	port, _ := strconv.ParseUint(where, 10, 32)
	return agent.ListenVsock(uint32(port))
}

func main() {
	pid1 := os.Getpid() == 1
	opts, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) && !pid1 {
			os.Exit(0)
		}
		if !pid1 {
			os.Exit(2)
		}
		// The kernel hands init whatever it did not understand on its
		// command line; PID 1 must not die of that.
		fmt.Fprintf(os.Stderr, "thaw-agent: ignoring arguments (%v); using defaults\n", err)
		opts, _ = parseFlags(nil, io.Discard)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: opts.logLevel}))
	if err := run(log, opts, pid1); err != nil {
		log.Error("thaw-agent stopped", "err", err)
		if pid1 {
			// Exiting would panic the kernel; power off instead.
			agent.Shutdown(log, agentapi.ShutdownPoweroff)
		}
		os.Exit(1)
	}
}

func run(log *slog.Logger, opts options, pid1 bool) error {
	if pid1 {
		if err := agent.SetupPID1(log); err != nil {
			return fmt.Errorf("setting up as init: %w", err)
		}
	}
	if opts.subreaper && !pid1 {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("becoming a child subreaper: %w", err)
		}
	}
	cfg := agent.Config{
		Version: version,
		Logger:  log,
		EtcDir:  opts.etc,
		ReapAll: pid1 || opts.subreaper,
	}
	if pid1 {
		cfg.Shutdown = func(action string) {
			if err := agent.Shutdown(log, action); err != nil {
				log.Error("shutdown failed", "err", err)
			}
		}
	}
	srv, err := agent.New(cfg)
	if err != nil {
		return err
	}
	ln, err := listen(opts.listen)
	if err != nil {
		return err
	}
	log.Info("thaw-agent listening", "addr", ln.Addr().String(), "version", version, "pid1", pid1)

	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	for {
		select {
		case err := <-served:
			srv.Close()
			if err == nil {
				err = errors.New("server stopped")
			}
			return err
		case sig := <-sigs:
			switch {
			case pid1 && sig == syscall.SIGINT:
				// Ctrl-Alt-Del (SendCtrlAltDel): reboot, which a
				// Firecracker-style VMM treats as the VM's exit.
				cfg.Shutdown(agentapi.ShutdownReboot)
			case pid1:
				srv.SignalAll(sig)
			case sig == syscall.SIGTERM || sig == syscall.SIGINT:
				log.Info("stopping", "signal", sig.String())
				done := make(chan struct{})
				go func() { srv.Close(); close(done) }()
				select {
				case <-done:
				case <-time.After(10 * time.Second):
					return errors.New("stopping took over 10s")
				}
				<-served
				return nil
			default:
				srv.SignalAll(sig)
			}
		}
	}
}
