package shim

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/thawvm/thaw/internal/conf"
	"github.com/thawvm/thaw/internal/uffd"
)

// PageMode says what the shim does with the VMM's guest memory.
type PageMode string

// The page modes.
const (
	// PagesNone runs no page server: the VMM loads with the File backend
	// (THAW_UFFD off, resume of a paused sandbox, a fresh boot).
	PagesNone PageMode = "none"
	// PagesServe serves MemFile through userfaultfd, prefetching in the
	// order of AccessLog (or file order) unless Prefetch is off.
	PagesServe PageMode = "serve"
	// PagesRecord serves MemFile on demand (no prefetch) and records each
	// page's first install into RecordLog until the VMM exits; the settle
	// detector says when the fault rate has converged.
	PagesRecord PageMode = "record"
)

// Files the shim keeps in its VM directory. thawd points the VMM's
// /snapshot/load at UFFDSocket and removes the directory with the sandbox.
const (
	ControlSocketName = "shim.sock"        // the control API
	APISocketName     = "api.sock"         // the VMM's Firecracker API socket
	UFFDSocketName    = "uffd.sock"        // the page server's handshake socket
	ShimLogName       = "shim.log"         // the shim's own log (and its stderr)
	VMMLogName        = "vmm.log"          // the VMM's stdout and stderr
	StatusFileName    = "shim-status.json" // the last Status, rewritten on every change
)

// MaxProcs is the largest Config.Procs.
const MaxProcs = 256

// maxSocketPath is the longest unix socket path Linux accepts (sun_path
// holds 108 bytes including the terminating NUL).
const maxSocketPath = 107

// Config is one shim's configuration. Start turns it into the shim's
// command line (Args) and the shim parses it back (ParseArgs); zero
// durations take the defaults in brackets.
type Config struct {
	// ID names the VM in logs and in the control API's info (a sandbox id
	// or a build-… id): 1–64 of [A-Za-z0-9_.-], starting alphanumeric.
	ID string
	// Dir is the VM directory: sockets, logs and the status file live
	// there. It must exist and be an absolute path.
	Dir string
	// VMM is BuiltinVMM, the VMM running inside the shim's process (see
	// Builtin), or a VMM binary (thaw-vmm or firecracker) as an absolute
	// path, started as a child process:
	// `VMM --api-sock <Dir>/api.sock [--id VMMID] VMMArgs...`.
	VMM string
	// VMMID, when set, is passed as --id (Firecracker's rule: 1–64 of
	// [A-Za-z0-9-]).
	VMMID string
	// VMMArgs are extra arguments for a VMM binary (none for the builtin
	// VMM).
	VMMArgs []string

	// Pages selects the page server's mode.
	Pages PageMode
	// MemFile is the snapshot's memory file (serve and record modes).
	MemFile string
	// AccessLog is the prefetch order (serve mode, optional). A log that
	// is missing, damaged or for another memory file is ignored with a
	// warning: prefetch then runs in file order.
	AccessLog string
	// Prefetch turns the prefetcher on (serve mode).
	Prefetch bool
	// PrefetchRate caps the prefetcher in bytes per second (serve mode
	// with prefetch on; 0: unlimited; see uffd.Config.PrefetchRate). It is
	// part of the shim's command line, so a shim reattached by a restarted
	// thawd keeps it.
	PrefetchRate uint64
	// Procs is the shim process's GOMAXPROCS, 0 to MaxProcs: 0 sizes it
	// automatically (at most 2 for the shim's own work; with the builtin
	// VMM, one P per vCPU plus one once the VM is known, at most the
	// host's CPUs; a GOMAXPROCS in the environment wins), N fixes it at N
	// for the process's life. Each P costs the process memory (its
	// caches), one P the least (docs/benchmarks/thawd.md).
	Procs int
	// RecordLog is where the access log is written (record mode).
	RecordLog string
	// SettleMin and SettleMax bound the settle detector (record mode)
	// [2s, capped at SettleMax; 10s, THAW_UFFD_RECORD_MAX].
	SettleMin, SettleMax time.Duration

	// ReadyTimeout bounds the wait for the VMM's API socket to answer
	// GET / [10s].
	ReadyTimeout time.Duration
	// HandshakeTimeout bounds the wait for the VMM's UFFD handshake,
	// counted from the moment its API answered [60s]. thawd's snapshot
	// load (30 s) must fit inside it.
	HandshakeTimeout time.Duration
	// StopGrace is how long a stop waits between SIGTERM and SIGKILL when
	// the request names no grace [5s].
	StopGrace time.Duration
	// CollectTimeout is how long the shim keeps a finished VM's status
	// waiting for thawd to collect it before it exits anyway; the status
	// file keeps the outcome after that [1h].
	CollectTimeout time.Duration
}

// validID reports whether id is 1-64 of [A-Za-z0-9_.-], starting
// alphanumeric: a sandbox id, safe as a file name. Checked by hand, not by
// a regexp: compiling the two regexps this file used to hold allocated
// 120 KB at the shim's start-up, which stayed resident in every idle shim
// (docs/benchmarks/thawd.md).
func validID(id string) bool {
	if id == "" || len(id) > 64 || !isAlnum(id[0]) {
		return false
	}
	for i := 1; i < len(id); i++ {
		if c := id[i]; !isAlnum(c) && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

// validVMMID reports whether id is 1-64 of [A-Za-z0-9-], Firecracker's
// rule for --id.
func validVMMID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := range len(id) {
		if c := id[i]; !isAlnum(c) && c != '-' {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// WithDefaults returns c with zero durations replaced by their defaults.
func (c Config) WithDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.SettleMax, 10*time.Second)
	def(&c.SettleMin, min(2*time.Second, c.SettleMax))
	def(&c.ReadyTimeout, 10*time.Second)
	def(&c.HandshakeTimeout, 60*time.Second)
	def(&c.StopGrace, 5*time.Second)
	def(&c.CollectTimeout, time.Hour)
	if c.Pages == "" {
		c.Pages = PagesNone
	}
	return c
}

// Validate reports everything wrong with c (after defaults), naming the
// fields. It checks paths for shape, not existence: the shim checks those
// when it opens them.
func (c Config) Validate() error {
	c = c.WithDefaults()
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if !validID(c.ID) {
		bad("id %q: want 1-64 of [A-Za-z0-9_.-], starting alphanumeric", c.ID)
	}
	if c.Dir == "" || !filepath.IsAbs(c.Dir) {
		bad("dir %q: want an absolute path to the VM directory", c.Dir)
	} else if n := len(c.socket(ControlSocketName)); n > maxSocketPath {
		bad("dir %q is too long: socket path %s would be %d bytes, the limit is %d", c.Dir, c.socket(ControlSocketName), n, maxSocketPath)
	}
	switch {
	case c.VMM == BuiltinVMM:
		if len(c.VMMArgs) > 0 {
			bad("vmm args %q: the builtin VMM takes no command-line arguments", c.VMMArgs)
		}
	case c.VMM == "" || !filepath.IsAbs(c.VMM):
		bad("vmm %q: want %q or an absolute path to the VMM binary", c.VMM, BuiltinVMM)
	}
	if c.VMMID != "" && !validVMMID(c.VMMID) {
		bad("vmm id %q: want 1-64 of [A-Za-z0-9-] (Firecracker's rule for --id)", c.VMMID)
	}
	for _, a := range c.VMMArgs {
		if a == "--api-sock" || strings.HasPrefix(a, "--api-sock=") || a == "--id" || strings.HasPrefix(a, "--id=") {
			bad("vmm arg %q: the shim sets --api-sock and --id itself", a)
		}
	}
	switch c.Pages {
	case PagesNone:
		if c.MemFile != "" || c.AccessLog != "" || c.RecordLog != "" || c.Prefetch || c.PrefetchRate != 0 {
			bad("pages none: mem file, access log, record log, prefetch and prefetch rate need a page server (pages serve or record)")
		}
	case PagesServe:
		if !filepath.IsAbs(c.MemFile) {
			bad("mem file %q: pages serve needs the absolute path of the memory file", c.MemFile)
		}
		if c.AccessLog != "" && !filepath.IsAbs(c.AccessLog) {
			bad("access log %q: want an absolute path", c.AccessLog)
		}
		if c.AccessLog != "" && !c.Prefetch {
			bad("access log %q is a prefetch order, but prefetch is off", c.AccessLog)
		}
		if c.PrefetchRate != 0 && !c.Prefetch {
			bad("prefetch rate %s limits the prefetcher, but prefetch is off", conf.ByteRate(c.PrefetchRate))
		}
		if c.PrefetchRate != 0 && c.PrefetchRate < uffd.MinPrefetchRate {
			bad("prefetch rate %s: want 0 (unlimited) or at least %d bytes/s", conf.ByteRate(c.PrefetchRate), uffd.MinPrefetchRate)
		}
		if c.RecordLog != "" {
			bad("record log %q: recording needs pages record", c.RecordLog)
		}
	case PagesRecord:
		if !filepath.IsAbs(c.MemFile) {
			bad("mem file %q: pages record needs the absolute path of the memory file", c.MemFile)
		}
		if !filepath.IsAbs(c.RecordLog) {
			bad("record log %q: pages record needs an absolute path to write the access log to", c.RecordLog)
		}
		if c.Prefetch || c.AccessLog != "" || c.PrefetchRate != 0 {
			bad("pages record: prefetch, its rate and an access log are for pages serve (recording runs without prefetch)")
		}
	default:
		bad("pages %q: want %q, %q or %q", c.Pages, PagesNone, PagesServe, PagesRecord)
	}
	if c.Procs < 0 || c.Procs > MaxProcs {
		bad("procs %d: want 0 (automatic) to %d", c.Procs, MaxProcs)
	}
	pos := func(name string, d time.Duration) {
		if d <= 0 {
			bad("%s %v: want a positive duration", name, d)
		}
	}
	pos("settle min", c.SettleMin)
	pos("settle max", c.SettleMax)
	pos("ready timeout", c.ReadyTimeout)
	pos("handshake timeout", c.HandshakeTimeout)
	pos("stop grace", c.StopGrace)
	pos("collect timeout", c.CollectTimeout)
	if c.SettleMin > c.SettleMax {
		bad("settle min %v exceeds settle max %v", c.SettleMin, c.SettleMax)
	}
	return errors.Join(errs...)
}

func (c Config) socket(name string) string { return filepath.Join(c.Dir, name) }

// ControlSocket is the shim's control socket.
func (c Config) ControlSocket() string { return c.socket(ControlSocketName) }

// APISocket is the VMM's Firecracker API socket.
func (c Config) APISocket() string { return c.socket(APISocketName) }

// UFFDSocket is the page server's socket: the backend_path of a Uffd
// /snapshot/load.
func (c Config) UFFDSocket() string { return c.socket(UFFDSocketName) }

// StatusFile is where the shim keeps its last Status.
func (c Config) StatusFile() string { return c.socket(StatusFileName) }

// ShimLog is the shim's log file.
func (c Config) ShimLog() string { return c.socket(ShimLogName) }

// VMMLog is the VMM's output file.
func (c Config) VMMLog() string { return c.socket(VMMLogName) }

// Args returns the shim's command line for c (without the program name).
// ParseArgs(c.Args()) gives c back, with defaults applied.
func (c Config) Args() []string {
	c = c.WithDefaults()
	a := []string{"--id", c.ID, "--dir", c.Dir, "--vmm", c.VMM}
	if c.VMMID != "" {
		a = append(a, "--vmm-id", c.VMMID)
	}
	for _, v := range c.VMMArgs {
		a = append(a, "--vmm-arg", v)
	}
	a = append(a, "--pages", string(c.Pages))
	opt := func(name, v string) {
		if v != "" {
			a = append(a, "--"+name, v)
		}
	}
	opt("mem-file", c.MemFile)
	opt("access-log", c.AccessLog)
	opt("record-log", c.RecordLog)
	if c.Prefetch {
		a = append(a, "--prefetch=true")
	}
	if c.PrefetchRate != 0 {
		a = append(a, "--prefetch-rate", conf.ByteRate(c.PrefetchRate).String())
	}
	if c.Procs != 0 {
		a = append(a, "--procs", strconv.Itoa(c.Procs))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"settle-min", c.SettleMin}, {"settle-max", c.SettleMax}, {"ready-timeout", c.ReadyTimeout},
		{"handshake-timeout", c.HandshakeTimeout}, {"stop-grace", c.StopGrace}, {"collect-timeout", c.CollectTimeout},
	} {
		a = append(a, "--"+d.name, d.v.String())
	}
	return a
}

// ParseArgs parses the shim's command line strictly: unknown flags,
// positional arguments, malformed durations or booleans and an invalid
// configuration are errors.
func ParseArgs(args []string) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("thaw-shim", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.ID, "id", "", "VM id")
	fs.StringVar(&c.Dir, "dir", "", "VM directory (absolute)")
	fs.StringVar(&c.VMM, "vmm", "", "VMM: builtin, or the VMM binary (absolute)")
	fs.StringVar(&c.VMMID, "vmm-id", "", "--id for the VMM")
	fs.Func("vmm-arg", "extra VMM argument (repeatable)", func(s string) error {
		c.VMMArgs = append(c.VMMArgs, s)
		return nil
	})
	fs.Func("pages", "page mode: none, serve or record", func(s string) error {
		c.Pages = PageMode(s)
		return nil
	})
	fs.StringVar(&c.MemFile, "mem-file", "", "memory file")
	fs.StringVar(&c.AccessLog, "access-log", "", "prefetch order")
	fs.StringVar(&c.RecordLog, "record-log", "", "access log to record")
	fs.Func("prefetch", "prefetch (true/false/1/0/on/off)", func(s string) error {
		v, err := conf.ParseBool(s)
		c.Prefetch = v
		return err
	})
	fs.Func("prefetch-rate", "prefetch limit: bytes per second, e.g. 209715200 or 200MiB/s; 0 or unlimited", func(s string) error {
		r, err := conf.ParseByteRate(s)
		c.PrefetchRate = uint64(r)
		return err
	})
	fs.IntVar(&c.Procs, "procs", 0, "GOMAXPROCS: 0 (automatic) or 1 to 256")
	fs.DurationVar(&c.SettleMin, "settle-min", 0, "settle detector minimum")
	fs.DurationVar(&c.SettleMax, "settle-max", 0, "settle detector maximum")
	fs.DurationVar(&c.ReadyTimeout, "ready-timeout", 0, "VMM API wait")
	fs.DurationVar(&c.HandshakeTimeout, "handshake-timeout", 0, "UFFD handshake wait")
	fs.DurationVar(&c.StopGrace, "stop-grace", 0, "SIGTERM to SIGKILL")
	fs.DurationVar(&c.CollectTimeout, "collect-timeout", 0, "wait for collect")
	if err := fs.Parse(args); err != nil {
		return Config{}, fmt.Errorf("parsing thaw-shim arguments: %w", err)
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("parsing thaw-shim arguments: unexpected argument %q (every setting is a --flag)", fs.Arg(0))
	}
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("thaw-shim configuration: %w", err)
	}
	return c, nil
}
