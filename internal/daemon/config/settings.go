package config

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/thawvm/thaw/internal/conf"
)

// Setting is one configuration value as every source names it.
type Setting struct {
	// Key is the config file key; the flag is Key with '-' for '_', the
	// environment variable THAW_ and Key in upper case.
	Key string
	// Help is one line for --help and the docs.
	Help string
	// field returns a pointer to the value in c: *string, *bool, *int,
	// *time.Duration, *slog.Level or *conf.ByteRate.
	field func(c *Config) any
}

// Flag returns the command-line flag name of s.
func (s Setting) Flag() string { return strings.ReplaceAll(s.Key, "_", "-") }

// Env returns the environment variable of s.
func (s Setting) Env() string { return "THAW_" + strings.ToUpper(s.Key) }

// Default returns the default value of s, formatted as a flag would take it.
func (s Setting) Default() string {
	d := Default()
	return format(s.field(&d))
}

// settings is the one list of thawd's settings.
var settings = []Setting{
	{"data_dir", "directory for the store, templates and sandboxes (on a reflink filesystem)", func(c *Config) any { return &c.DataDir }},
	{"socket", "unix socket the API listens on", func(c *Config) any { return &c.Socket }},
	{"tcp_addr", "also serve the API on this host:port (needs token_file)", func(c *Config) any { return &c.TCPAddr }},
	{"token_file", "file holding the bearer token the TCP API requires", func(c *Config) any { return &c.TokenFile }},
	{"vmm", "builtin (the VMM inside thaw-shim: one process per sandbox), or a VMM binary run as the shim's child: thaw-vmm or firecracker (name in PATH or absolute path)", func(c *Config) any { return &c.VMM }},
	{"shim", "thaw-shim binary (name in PATH or absolute path)", func(c *Config) any { return &c.Shim }},
	{"kernel", "guest kernel for template builds (default <data_dir>/kernel/vmlinux)", func(c *Config) any { return &c.Kernel }},
	{"agent", "static thaw-agent binary injected into template images (default <data_dir>/agent/thaw-agent)", func(c *Config) any { return &c.Agent }},
	{"shim_procs", "GOMAXPROCS of each sandbox's thaw-shim: 1 to 256 fixes it, 0 sizes it automatically (with the builtin VMM one P per vCPU plus one, at most the host's CPUs); each P costs an idle sandbox ~300 KiB", func(c *Config) any { return &c.ShimProcs }},
	{"uffd", "restore memory lazily through a userfaultfd page server (off: File backend)", func(c *Config) any { return &c.UFFD }},
	{"uffd_prefetch", "prefetch pages in recorded order after restore (off also disables recording)", func(c *Config) any { return &c.UFFDPrefetch }},
	{"uffd_prefetch_rate", "cap on each sandbox's prefetch: bytes per second or e.g. 200MiB/s; 0 or unlimited for none (faults are never limited)", func(c *Config) any { return &c.UFFDPrefetchRate }},
	{"uffd_record_max", "maximum length of a template build's recording run", func(c *Config) any { return &c.UFFDRecordMax }},
	{"max_concurrent_restores", "how many creates may restore at once", func(c *Config) any { return &c.MaxConcurrentRestores }},
	{"load_timeout", "bound on PUT /snapshot/load", func(c *Config) any { return &c.LoadTimeout }},
	{"ready_timeout", "bound on a restored guest's readiness (agent health and init, or the serial marker)", func(c *Config) any { return &c.ReadyTimeout }},
	{"reconcile_interval", "how often the reconciler compares records with live shims", func(c *Config) any { return &c.ReconcileInterval }},
	{"reconcile_max_actions", "destructive actions one reconciler pass may take (0: report only)", func(c *Config) any { return &c.ReconcileMaxActions }},
	{"shim_unresponsive_limit", "how long a running sandbox's shim may be alive without answering before the reconciler fails the sandbox and stops the shim", func(c *Config) any { return &c.ShimUnresponsiveLimit }},
	{"log_level", "minimum log level: debug, info, warn or error", func(c *Config) any { return &c.LogLevel }},
}

// Settings returns every setting, in documentation order.
func Settings() []Setting { return append([]Setting(nil), settings...) }

func lookupKey(key string) (Setting, bool) {
	for _, s := range settings {
		if s.Key == key {
			return s, true
		}
	}
	return Setting{}, false
}

func knownKeys() string {
	keys := make([]string, len(settings))
	for i, s := range settings {
		keys[i] = s.Key
	}
	return strings.Join(keys, ", ")
}

// parseInto parses text into the field p points at, by the field's type.
// Booleans use conf.ParseBool (strict), durations time.ParseDuration,
// levels slog.Level's text form, rates conf.ParseByteRate.
func parseInto(p any, text string) error {
	switch p := p.(type) {
	case *string:
		*p = text
	case *bool:
		b, err := conf.ParseBool(text)
		if err != nil {
			return err
		}
		*p = b
	case *int:
		n, err := strconv.Atoi(strings.TrimSpace(text))
		if err != nil {
			return fmt.Errorf("invalid integer %q", text)
		}
		*p = n
	case *time.Duration:
		d, err := time.ParseDuration(strings.TrimSpace(text))
		if err != nil {
			return fmt.Errorf("invalid duration %q: use a number with a unit, like 500ms, 10s or 2m", text)
		}
		*p = d
	case *slog.Level:
		var l slog.Level
		if err := l.UnmarshalText([]byte(strings.TrimSpace(text))); err != nil {
			return fmt.Errorf("invalid log level %q: use debug, info, warn or error", text)
		}
		*p = l
	case *conf.ByteRate:
		r, err := conf.ParseByteRate(text)
		if err != nil {
			return err
		}
		*p = r
	default:
		panic(fmt.Sprintf("config: setting field of unsupported type %T", p))
	}
	return nil
}

// setFromTOML sets the field p points at from a decoded TOML value, which
// must have the matching TOML type: a boolean for booleans, an integer for
// integers, a string for everything else (durations, levels and rates are
// strings like "10s", "debug" and "200MiB/s"; a rate may also be an
// integer, in bytes per second).
func setFromTOML(p any, v any) error {
	switch p := p.(type) {
	case *bool:
		b, ok := v.(bool)
		if !ok {
			return fmt.Errorf("want a boolean (true or false, unquoted), got %s", describe(v))
		}
		*p = b
	case *int:
		n, ok := v.(int64)
		if !ok {
			return fmt.Errorf("want an integer, got %s", describe(v))
		}
		if int64(int(n)) != n {
			return fmt.Errorf("integer %d is out of range", n)
		}
		*p = int(n)
	case *conf.ByteRate:
		if n, ok := v.(int64); ok {
			if n < 0 {
				return fmt.Errorf("rate %d is negative: want bytes per second, or a string like \"200MiB/s\"", n)
			}
			*p = conf.ByteRate(n)
			return nil
		}
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("want bytes per second (an integer) or a string like \"200MiB/s\", got %s", describe(v))
		}
		return parseInto(p, s)
	default:
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("want a string, got %s", describe(v))
		}
		return parseInto(p, s)
	}
	return nil
}

func describe(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("the string %q", v)
	case map[string]any:
		return "a table"
	case []any, []map[string]any:
		return "an array"
	default:
		return fmt.Sprintf("%T %v", v, v)
	}
}

func format(p any) string {
	switch p := p.(type) {
	case *string:
		return *p
	case *bool:
		return strconv.FormatBool(*p)
	case *int:
		return strconv.Itoa(*p)
	case *time.Duration:
		return p.String()
	case *slog.Level:
		return strings.ToLower(p.String())
	case *conf.ByteRate:
		return p.String()
	}
	panic(fmt.Sprintf("config: setting field of unsupported type %T", p))
}
