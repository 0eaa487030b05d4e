// Package config is thawd's configuration: one documented Config with
// defaults and Validate, and the pieces cmd/thawd uses to fill it from, in
// rising priority, a TOML config file, the environment and command-line
// flags. Every setting is declared once (see settings) with its file key,
// environment variable and flag; every source parses strictly, and a bad
// value is an error naming the source and the key.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/thawvm/thaw/internal/conf"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/shim"
	"github.com/thawvm/thaw/internal/uffd"
)

// Config is thawd's configuration. The zero value is not useful; start from
// Default.
type Config struct {
	// DataDir holds the store, templates and sandboxes. Sandbox disks are
	// reflink clones of template disks, so it must be on a filesystem
	// with reflinks (XFS with reflink=1, btrfs, bcachefs).
	DataDir string
	// Socket is the unix socket the API listens on.
	Socket string
	// TCPAddr, if set, also serves the API on this host:port, which then
	// requires a bearer token read from TokenFile.
	TCPAddr   string
	TokenFile string
	// VMM is BuiltinVMM, the VMM running inside each sandbox's thaw-shim
	// (one process per sandbox: the default), or a VMM binary the shim
	// starts as its child (thaw-vmm or firecracker); a bare name is looked
	// up in PATH.
	VMM string
	// Shim is the thaw-shim binary; a bare name is looked up in PATH.
	Shim string
	// ShimProcs is each shim's GOMAXPROCS (the shim's --procs): 0 sizes
	// it automatically (2, or with the builtin VMM one P per vCPU plus
	// one, at most the host's CPUs), 1 to shim.MaxProcs fixes it. Each P
	// costs an idle sandbox ~300 KiB; 1, the default, is what meets issue
	// 7's PSS target, and costs page serving little (measured in
	// docs/benchmarks/thawd.md). A sandbox keeps the value it was created
	// with.
	ShimProcs int
	// Kernel is the guest kernel for template builds; empty means
	// <DataDir>/kernel/vmlinux.
	Kernel string
	// Agent is the static thaw-agent binary injected into template
	// images; empty means <DataDir>/agent/thaw-agent.
	Agent string
	// UFFD restores guest memory lazily through a page server; off loads
	// the memory file with the File backend. It can also be switched at
	// run time through the API.
	UFFD bool
	// UFFDPrefetch prefetches pages in recorded order after restore. Off
	// also disables recording at template build.
	UFFDPrefetch bool
	// UFFDPrefetchRate caps each sandbox's prefetch in bytes per second
	// (0: unlimited), bounding the disk, page cache and CPU one sandbox's
	// prefetch takes from its neighbours; faults are never limited. A
	// sandbox keeps the rate it was created with, across thawd restarts.
	// Unlimited by default: a uniform limit also slows the prefetch of a
	// sandbox being created (docs/benchmarks/uffd.md, burst).
	UFFDPrefetchRate conf.ByteRate
	// UFFDRecordMax bounds a template build's recording run.
	UFFDRecordMax time.Duration
	// MaxConcurrentRestores bounds how many creates restore at once.
	MaxConcurrentRestores int
	// LoadTimeout bounds PUT /snapshot/load.
	LoadTimeout time.Duration
	// ReadyTimeout bounds the wait for a restored guest to be ready (agent
	// health and init, or the serial marker), at create and in a
	// template's recording run. Slow hosts (nested virtualization) need
	// more than the default.
	ReadyTimeout time.Duration
	// ReconcileInterval is how often the reconciler compares records with
	// live shims.
	ReconcileInterval time.Duration
	// ReconcileMaxActions caps the destructive actions (failing a record,
	// stopping an unknown shim) one reconciler pass may take; 0 means it
	// only reports.
	ReconcileMaxActions int
	// ShimUnresponsiveLimit is how long a running sandbox's shim may be
	// alive without answering its control socket (in every reconciler
	// pass) before the reconciler fails the sandbox and stops the shim.
	// Generous on purpose: a shim on a heavily loaded host can be slow
	// to answer for a while, and failing it stops a healthy VM.
	ShimUnresponsiveLimit time.Duration
	// LogLevel is the minimum level logged.
	LogLevel slog.Level
}

// Default returns the configuration thawd runs with when nothing is set.
func Default() Config {
	return Config{
		DataDir:               "/var/lib/thaw",
		Socket:                "/run/thaw/thawd.sock",
		VMM:                   BuiltinVMM,
		Shim:                  "thaw-shim",
		ShimProcs:             1,
		UFFD:                  true,
		UFFDPrefetch:          true,
		UFFDRecordMax:         10 * time.Second,
		MaxConcurrentRestores: 16,
		LoadTimeout:           30 * time.Second,
		ReadyTimeout:          30 * time.Second,
		ReconcileInterval:     30 * time.Second,
		ReconcileMaxActions:   10,
		ShimUnresponsiveLimit: 5 * time.Minute,
		LogLevel:              slog.LevelInfo,
	}
}

// BuiltinVMM is Config.VMM for the VMM built into thaw-shim (shim.BuiltinVMM).
// To run a binary named "builtin", give its path.
const BuiltinVMM = "builtin"

// Record reports whether template builds record the page access order;
// turning prefetch off turns recording off too (nothing would read it).
func (c *Config) Record() bool { return c.UFFDPrefetch }

// KernelPath returns the guest kernel path, resolving the default.
func (c *Config) KernelPath() string {
	if c.Kernel != "" {
		return c.Kernel
	}
	return filepath.Join(c.DataDir, "kernel", "vmlinux")
}

// AgentPath returns the agent binary's path, resolving the default.
func (c *Config) AgentPath() string {
	if c.Agent != "" {
		return c.Agent
	}
	return filepath.Join(c.DataDir, "agent", "thaw-agent")
}

// Limits on values, shared by Validate and the docs.
const (
	maxRestoresLimit = 4096
	maxRecordLimit   = time.Hour
	// sunPathMax is the size of sockaddr_un.sun_path on Linux, including
	// the terminating NUL (unix(7)).
	sunPathMax = 108
)

// Validate checks every value and returns all problems at once, each naming
// the setting by its file key. Errors are of kind ErrInvalidArgument.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	absPath := func(key, p string, optional bool) {
		switch {
		case p == "" && optional:
		case p == "":
			bad(key, "must be set")
		case !filepath.IsAbs(p):
			bad(key, "%q is not an absolute path", p)
		}
	}
	absPath("data_dir", c.DataDir, false)
	absPath("socket", c.Socket, false)
	if len(c.Socket) >= sunPathMax {
		bad("socket", "%q is %d bytes; unix socket paths must be shorter than %d", c.Socket, len(c.Socket), sunPathMax)
	}
	if c.TCPAddr != "" {
		if _, _, err := net.SplitHostPort(c.TCPAddr); err != nil {
			bad("tcp_addr", "%q is not host:port: %v", c.TCPAddr, err)
		}
		if c.TokenFile == "" {
			bad("token_file", "must be set when tcp_addr is: the TCP API requires a bearer token")
		}
	}
	absPath("token_file", c.TokenFile, true)
	switch {
	case c.VMM == "":
		bad("vmm", "must be set: %q, or a VMM binary (thaw-vmm, firecracker)", BuiltinVMM)
	case c.VMM != BuiltinVMM && strings.EqualFold(strings.ReplaceAll(c.VMM, "-", ""), BuiltinVMM):
		bad("vmm", "%q: the VMM built into thaw-shim is spelt %q (to run a binary of that name, give its path)", c.VMM, BuiltinVMM)
	}
	if c.Shim == "" {
		bad("shim", "must be set")
	}
	if c.ShimProcs < 0 || c.ShimProcs > shim.MaxProcs {
		bad("shim_procs", "%d is out of range: must be 0 (automatic) to %d", c.ShimProcs, shim.MaxProcs)
	}
	absPath("kernel", c.Kernel, true)
	absPath("agent", c.Agent, true)
	if c.UFFDPrefetchRate != 0 && c.UFFDPrefetchRate < uffd.MinPrefetchRate {
		bad("uffd_prefetch_rate", "%s is too low: must be 0 (unlimited) or at least %d bytes per second", c.UFFDPrefetchRate, uffd.MinPrefetchRate)
	}
	if c.UFFDRecordMax <= 0 || c.UFFDRecordMax > maxRecordLimit {
		bad("uffd_record_max", "%v is out of range: must be above 0 and at most %v", c.UFFDRecordMax, maxRecordLimit)
	}
	if c.MaxConcurrentRestores < 1 || c.MaxConcurrentRestores > maxRestoresLimit {
		bad("max_concurrent_restores", "%d is out of range: must be 1 to %d", c.MaxConcurrentRestores, maxRestoresLimit)
	}
	if c.LoadTimeout <= 0 {
		bad("load_timeout", "%v: must be above 0", c.LoadTimeout)
	}
	if c.ReadyTimeout <= 0 {
		bad("ready_timeout", "%v: must be above 0", c.ReadyTimeout)
	}
	if c.ReconcileInterval < time.Second {
		bad("reconcile_interval", "%v: must be at least 1s", c.ReconcileInterval)
	}
	if c.ReconcileMaxActions < 0 {
		bad("reconcile_max_actions", "%d: must be 0 or more", c.ReconcileMaxActions)
	}
	if c.ShimUnresponsiveLimit < time.Second {
		bad("shim_unresponsive_limit", "%v: must be at least 1s (the reconciler checks every reconcile_interval, so the limit is reached at the first pass after it)", c.ShimUnresponsiveLimit)
	}
	if len(errs) == 0 {
		return nil
	}
	return errdefs.Mark(fmt.Errorf("invalid configuration: %w", errors.Join(errs...)), errdefs.ErrInvalidArgument)
}
