package config

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/errdefs"
)

func env(kv ...string) func(string) (string, bool) {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func writeFile(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "thawd.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func newFlagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("thawd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

func TestDefaultIsValid(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
	if got, want := c.KernelPath(), "/var/lib/thaw/kernel/vmlinux"; got != want {
		t.Errorf("KernelPath = %q, want %q", got, want)
	}
	if c.VMM != BuiltinVMM {
		t.Errorf("default VMM: got %q, want %q (one process per sandbox)", c.VMM, BuiltinVMM)
	}
	if c.ShimProcs != 1 {
		t.Errorf("default shim procs: got %d, want 1 (the idle-PSS target, docs/benchmarks/thawd.md)", c.ShimProcs)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(c *Config)
		want   string
	}{
		{"relative data dir", func(c *Config) { c.DataDir = "data" }, `data_dir: "data" is not an absolute path`},
		{"empty data dir", func(c *Config) { c.DataDir = "" }, "data_dir: must be set"},
		{"long socket", func(c *Config) { c.Socket = "/" + strings.Repeat("s", 120) }, "socket:"},
		{"tcp without token", func(c *Config) { c.TCPAddr = "127.0.0.1:7070" }, "token_file: must be set when tcp_addr is"},
		{"bad tcp", func(c *Config) { c.TCPAddr, c.TokenFile = "7070", "/etc/thaw/token" }, `tcp_addr: "7070" is not host:port`},
		{"no vmm", func(c *Config) { c.VMM = "" }, "vmm: must be set"},
		{"misspelt builtin", func(c *Config) { c.VMM = "Built-in" }, `vmm: "Built-in": the VMM built into thaw-shim is spelt "builtin"`},
		{"relative kernel", func(c *Config) { c.Kernel = "vmlinux" }, "kernel:"},
		{"zero record max", func(c *Config) { c.UFFDRecordMax = 0 }, "uffd_record_max: 0s is out of range"},
		{"huge record max", func(c *Config) { c.UFFDRecordMax = 2 * time.Hour }, "uffd_record_max:"},
		{"zero restores", func(c *Config) { c.MaxConcurrentRestores = 0 }, "max_concurrent_restores: 0 is out of range"},
		{"zero load timeout", func(c *Config) { c.LoadTimeout = 0 }, "load_timeout:"},
		{"negative ready timeout", func(c *Config) { c.ReadyTimeout = -time.Second }, "ready_timeout:"},
		{"fast reconcile", func(c *Config) { c.ReconcileInterval = time.Millisecond }, "reconcile_interval:"},
		{"negative actions", func(c *Config) { c.ReconcileMaxActions = -1 }, "reconcile_max_actions:"},
		{"zero unresponsive limit", func(c *Config) { c.ShimUnresponsiveLimit = 0 }, "shim_unresponsive_limit: 0s: must be at least 1s"},
		{"tiny unresponsive limit", func(c *Config) { c.ShimUnresponsiveLimit = time.Millisecond }, "shim_unresponsive_limit:"},
		{"prefetch rate below a page a second", func(c *Config) { c.UFFDPrefetchRate = 1000 }, "uffd_prefetch_rate: 1000B/s is too low: must be 0 (unlimited) or at least 4096"},
		{"negative shim procs", func(c *Config) { c.ShimProcs = -1 }, "shim_procs: -1 is out of range: must be 0 (automatic) to 256"},
		{"too many shim procs", func(c *Config) { c.ShimProcs = 257 }, "shim_procs: 257 is out of range: must be 0 (automatic) to 256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.change(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tt.want)
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("Validate() error is not invalid argument: %v", err)
			}
		})
	}
	c := Default()
	c.DataDir, c.VMM = "", ""
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "data_dir") || !strings.Contains(err.Error(), "vmm") {
		t.Errorf("two problems: got %v, want both reported", err)
	}
}

func TestApplyTOML(t *testing.T) {
	tests := []struct {
		name string
		file string
		want func(c *Config)
		err  string
	}{
		{"sets values", `
# a comment
data_dir = "/srv/thaw"
uffd = false
uffd_record_max = "2s"
max_concurrent_restores = 4
log_level = "debug"
uffd_prefetch_rate = "200MiB/s"
`, func(c *Config) {
			c.DataDir, c.UFFD, c.UFFDRecordMax, c.MaxConcurrentRestores, c.LogLevel = "/srv/thaw", false, 2*time.Second, 4, slog.LevelDebug
			c.UFFDPrefetchRate = 200 << 20
		}, ""},
		{"rate in bytes per second", `uffd_prefetch_rate = 1048576`, func(c *Config) { c.UFFDPrefetchRate = 1 << 20 }, ""},
		{"shim procs", `shim_procs = 0`, func(c *Config) { c.ShimProcs = 0 }, ""},
		{"shim procs as string", `shim_procs = "1"`, nil, `key "shim_procs": want an integer`},
		{"negative rate", `uffd_prefetch_rate = -1`, nil, `key "uffd_prefetch_rate": rate -1 is negative`},
		{"bad rate", `uffd_prefetch_rate = "fast"`, nil, `key "uffd_prefetch_rate": invalid rate "fast": use a whole number of bytes per second`},
		{"rate as bool", `uffd_prefetch_rate = true`, nil, `key "uffd_prefetch_rate": want bytes per second (an integer) or a string like "200MiB/s", got bool true`},
		{"empty file", "", func(c *Config) {}, ""},
		{"unknown key", `max_restores = 4`, nil, `key "max_restores"`},
		{"table", "[uffd]\nprefetch = true", nil, `key "uffd": want a boolean (true or false, unquoted), got a table`},
		{"quoted bool", `uffd = "on"`, nil, `key "uffd": want a boolean (true or false, unquoted), got the string "on"`},
		{"int as string", `max_concurrent_restores = "4"`, nil, `key "max_concurrent_restores": want an integer`},
		{"bare duration", `uffd_record_max = 10`, nil, `key "uffd_record_max": want a string`},
		{"bad duration", `load_timeout = "30"`, nil, `key "load_timeout": invalid duration "30"`},
		{"bad level", `log_level = "loud"`, nil, `key "log_level": invalid log level "loud"`},
		{"syntax", `uffd = `, nil, "config file"},
		{"duplicate", "uffd = true\nuffd = false", nil, "config file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			err := c.ApplyTOML("thawd.toml", []byte(tt.file))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), "thawd.toml") {
					t.Fatalf("got %v, want an error naming the file and containing %q", err, tt.err)
				}
				if !errdefs.IsInvalidArgument(err) {
					t.Errorf("error is not invalid argument: %v", err)
				}
				if !reflect.DeepEqual(c, Default()) {
					t.Errorf("a refused file changed the config: %+v", c)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := Default()
			tt.want(&want)
			if !reflect.DeepEqual(c, want) {
				t.Errorf("got %+v\nwant %+v", c, want)
			}
		})
	}
}

func TestApplyEnv(t *testing.T) {
	tests := []struct {
		name   string
		lookup func(string) (string, bool)
		want   func(c *Config)
		err    string
	}{
		{"sets values", env("THAW_UFFD", "off", "THAW_UFFD_PREFETCH", "0", "THAW_UFFD_RECORD_MAX", "3s",
			"THAW_MAX_CONCURRENT_RESTORES", "64", "THAW_DATA_DIR", "/d", "THAW_VMM", "firecracker",
			"THAW_KERNEL", "/k/vmlinux", "THAW_SOCKET", "/run/t.sock", "THAW_UFFD_PREFETCH_RATE", "50MB/s"),
			func(c *Config) {
				c.UFFD, c.UFFDPrefetch, c.UFFDRecordMax, c.MaxConcurrentRestores = false, false, 3*time.Second, 64
				c.UFFDPrefetchRate = 50e6
				c.DataDir, c.VMM, c.Kernel, c.Socket = "/d", "firecracker", "/k/vmlinux", "/run/t.sock"
			}, ""},
		{"empty is unset", env("THAW_UFFD", "", "THAW_VMM", "  "), func(c *Config) {}, ""},
		{"bad bool", env("THAW_UFFD", "maybe"), nil, `environment THAW_UFFD: invalid boolean "maybe"`},
		{"bad int", env("THAW_MAX_CONCURRENT_RESTORES", "lots"), nil, `environment THAW_MAX_CONCURRENT_RESTORES: invalid integer "lots"`},
		{"bad duration", env("THAW_UFFD_RECORD_MAX", "10"), nil, `environment THAW_UFFD_RECORD_MAX: invalid duration "10"`},
		{"shim procs", env("THAW_SHIM_PROCS", "0"), func(c *Config) { c.ShimProcs = 0 }, ""},
		{"bad shim procs", env("THAW_SHIM_PROCS", "one"), nil, `environment THAW_SHIM_PROCS: invalid integer "one"`},
		{"unresponsive limit", env("THAW_SHIM_UNRESPONSIVE_LIMIT", "90s"), func(c *Config) { c.ShimUnresponsiveLimit = 90 * time.Second }, ""},
		{"unresponsive limit without a unit", env("THAW_SHIM_UNRESPONSIVE_LIMIT", "300"), nil,
			`environment THAW_SHIM_UNRESPONSIVE_LIMIT: invalid duration "300"`},
		{"bad rate", env("THAW_UFFD_PREFETCH_RATE", "200MiB"), nil, `environment THAW_UFFD_PREFETCH_RATE: invalid rate "200MiB": use a whole number of bytes per second ("209715200"), a whole number with a unit per second ("200MiB/s"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			err := c.ApplyEnv(tt.lookup)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %v, want an error containing %q", err, tt.err)
				}
				if !reflect.DeepEqual(c, Default()) {
					t.Errorf("a refused environment changed the config")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := Default()
			tt.want(&want)
			if !reflect.DeepEqual(c, want) {
				t.Errorf("got %+v\nwant %+v", c, want)
			}
		})
	}
}

// TestPrecedence: defaults < file < environment < flags, key by key.
func TestPrecedence(t *testing.T) {
	path := writeFile(t, `
uffd = false
max_concurrent_restores = 4
uffd_record_max = "5s"
vmm = "/opt/fc/firecracker"
`)
	c, err := Load(newFlagSet(),
		[]string{"-config", path, "-max-concurrent-restores", "12", "-uffd-record-max=7s", "-shim-procs", "3"},
		env("THAW_MAX_CONCURRENT_RESTORES", "8", "THAW_UFFD_PREFETCH", "off", "THAW_UFFD_RECORD_MAX", "6s", "THAW_SHIM_PROCS", "2"))
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.UFFD = false                    // file
	want.VMM = "/opt/fc/firecracker"     // file
	want.UFFDPrefetch = false            // env over default
	want.MaxConcurrentRestores = 12      // flag over env over file
	want.UFFDRecordMax = 7 * time.Second // flag over env over file
	want.ShimProcs = 3                   // flag over env
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got %+v\nwant %+v", c, want)
	}
}

func TestLoad(t *testing.T) {
	good := writeFile(t, `uffd = false`)
	tests := []struct {
		name string
		args []string
		env  func(string) (string, bool)
		want func(c *Config)
		err  string
	}{
		{"config from env", nil, env("THAW_CONFIG", good), func(c *Config) { c.UFFD = false }, ""},
		{"flag config beats env config", []string{"-config", good}, env("THAW_CONFIG", "/nonexistent.toml"), func(c *Config) { c.UFFD = false }, ""},
		{"bare bool flag", []string{"-config", good, "-uffd"}, env(), func(c *Config) {}, ""},
		{"last flag wins", []string{"-config", good, "-uffd=on", "-uffd=off"}, env(), func(c *Config) { c.UFFD = false }, ""},
		{"missing named file", []string{"-config", "/nonexistent/thawd.toml"}, env(), nil, "reading config file"},
		{"bad bool flag", []string{"-config", good, "-uffd=maybe"}, env(), nil, `invalid boolean value "maybe" for -uffd`},
		{"bad int flag", []string{"-config", good, "-max-concurrent-restores", "x"}, env(), nil, `invalid value "x" for flag -max-concurrent-restores: invalid integer`},
		{"rate flag", []string{"-config", good, "-uffd-prefetch-rate", "2MiB/s"}, env(), func(c *Config) { c.UFFD, c.UFFDPrefetchRate = false, 2<<20 }, ""},
		{"bad rate flag", []string{"-config", good, "-uffd-prefetch-rate", "2 MiB/s"}, env(), nil, `invalid value "2 MiB/s" for flag -uffd-prefetch-rate: invalid rate`},
		{"unknown flag", []string{"-config", good, "-uffd-prefech"}, env(), nil, "flag provided but not defined: -uffd-prefech"},
		{"positional", []string{"-config", good, "serve"}, env(), nil, `unexpected arguments ["serve"]`},
		{"invalid result", []string{"-config", good, "-data-dir", "rel"}, env(), nil, `data_dir: "rel" is not an absolute path`},
		{"bad env", []string{"-config", good}, env("THAW_UFFD", "2"), nil, "environment THAW_UFFD"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(newFlagSet(), tt.args, tt.env)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %v, want an error containing %q", err, tt.err)
				}
				if !errdefs.IsInvalidArgument(err) {
					t.Errorf("error is not invalid argument: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := Default()
			tt.want(&want)
			if !reflect.DeepEqual(c, want) {
				t.Errorf("got %+v\nwant %+v", c, want)
			}
		})
	}
}

func TestUnknownEnv(t *testing.T) {
	got := UnknownEnv([]string{"PATH=/bin", "THAW_UFFD=1", "THAW_UFFD_PREFTCH=0", "THAW_REQUIRE_KVM=1", "THAW_CONFIG=/x", "THAWED=1"})
	if want := []string{"THAW_UFFD_PREFTCH"}; !slices.Equal(got, want) {
		t.Errorf("UnknownEnv = %q, want %q", got, want)
	}
}

// TestEverySettingRoundTrips: each setting's default, formatted, parses
// back to the default (so -help shows values that work), and every field of
// Config has a setting.
func TestEverySettingRoundTrips(t *testing.T) {
	seen := map[any]bool{}
	for _, s := range Settings() {
		var c Config
		p := s.field(&c)
		if err := parseInto(p, s.Default()); err != nil {
			t.Errorf("%s: default %q does not parse: %v", s.Key, s.Default(), err)
		}
		seen[p] = true
		if s.Flag() == "" || !strings.HasPrefix(s.Env(), "THAW_") {
			t.Errorf("%s: flag %q, env %q", s.Key, s.Flag(), s.Env())
		}
	}
	if n := reflect.TypeOf(Config{}).NumField(); len(seen) != n {
		t.Errorf("%d settings cover %d fields, want all %d fields of Config", len(seen), len(seen), n)
	}
}

// TestDocsListEverySetting keeps docs/ARCHITECTURE-daemon.md's table in step
// with the settings.
func TestDocsListEverySetting(t *testing.T) {
	doc, err := os.ReadFile("../../../docs/ARCHITECTURE-daemon.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range Settings() {
		row := fmt.Sprintf("| `%s` | `%s` |", s.Key, s.Env())
		if !strings.Contains(string(doc), row) {
			t.Errorf("docs/ARCHITECTURE-daemon.md has no row starting %q", row)
		}
	}
}

// FuzzApplyTOML: any file either is refused, leaving the config as it was,
// or applies cleanly; never a panic.
func FuzzApplyTOML(f *testing.F) {
	f.Add("uffd = false\nmax_concurrent_restores = 4\nuffd_record_max = \"2s\"\n")
	f.Add("[uffd]\nx = 1")
	f.Add("log_level = \"debug+2\"\nload_timeout = \"-1s\"")
	f.Add("max_concurrent_restores = 9223372036854775807")
	f.Fuzz(func(t *testing.T, file string) {
		c := Default()
		if err := c.ApplyTOML("fuzz.toml", []byte(file)); err != nil {
			if !reflect.DeepEqual(c, Default()) {
				t.Fatalf("refused file %q changed the config", file)
			}
			if !strings.Contains(err.Error(), "fuzz.toml") {
				t.Fatalf("error %q does not name the file", err)
			}
		}
	})
}
