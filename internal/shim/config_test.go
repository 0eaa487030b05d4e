package shim_test

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/shim"
)

func validConfig() shim.Config {
	return shim.Config{ID: "sb-1", Dir: "/var/lib/thaw/sandboxes/sb-1", VMM: "/usr/bin/firecracker",
		Pages: shim.PagesServe, MemFile: "/t/mem", AccessLog: "/t/access.log", Prefetch: true}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		adjust func(*shim.Config)
		want   string // substring of the error; "" means valid
	}{
		{"valid serve", func(*shim.Config) {}, ""},
		{"valid none", func(c *shim.Config) { c.Pages, c.MemFile, c.AccessLog, c.Prefetch = shim.PagesNone, "", "", false }, ""},
		{"valid record", func(c *shim.Config) {
			c.Pages, c.AccessLog, c.Prefetch, c.RecordLog = shim.PagesRecord, "", false, "/t/rec.log"
		}, ""},
		{"valid on demand", func(c *shim.Config) { c.AccessLog, c.Prefetch = "", false }, ""},
		{"valid prefetch rate", func(c *shim.Config) { c.PrefetchRate = 200 << 20 }, ""},
		{"prefetch rate without prefetch", func(c *shim.Config) { c.AccessLog, c.Prefetch, c.PrefetchRate = "", false, 1<<20 }, "prefetch rate 1MiB/s limits the prefetcher, but prefetch is off"},
		{"prefetch rate below a page a second", func(c *shim.Config) { c.PrefetchRate = 100 }, "prefetch rate 100B/s: want 0 (unlimited) or at least 4096"},
		{"none with prefetch rate", func(c *shim.Config) {
			c.Pages, c.MemFile, c.AccessLog, c.Prefetch, c.PrefetchRate = shim.PagesNone, "", "", false, 1<<20
		}, "need a page server"},
		{"record with prefetch rate", func(c *shim.Config) {
			c.Pages, c.AccessLog, c.Prefetch, c.RecordLog, c.PrefetchRate = shim.PagesRecord, "", false, "/t/r", 1<<20
		}, "without prefetch"},
		{"one proc", func(c *shim.Config) { c.Procs = 1 }, ""},
		{"most procs", func(c *shim.Config) { c.Procs = shim.MaxProcs }, ""},
		{"negative procs", func(c *shim.Config) { c.Procs = -1 }, "procs -1: want 0 (automatic) to 256"},
		{"too many procs", func(c *shim.Config) { c.Procs = 257 }, "procs 257: want 0 (automatic) to 256"},
		{"empty id", func(c *shim.Config) { c.ID = "" }, "id"},
		{"id with slash", func(c *shim.Config) { c.ID = "a/b" }, "id \"a/b\""},
		{"id of 64", func(c *shim.Config) { c.ID = "a" + strings.Repeat("b._-", 15) + "xyz" }, ""},
		{"id of 65", func(c *shim.Config) { c.ID = strings.Repeat("a", 65) }, "1-64"},
		{"id starting with dot", func(c *shim.Config) { c.ID = ".a" }, "starting alphanumeric"},
		{"id starting with hyphen", func(c *shim.Config) { c.ID = "-a" }, "starting alphanumeric"},
		{"id not ascii", func(c *shim.Config) { c.ID = "sb-é" }, "id"},
		{"vmm id of 64", func(c *shim.Config) { c.VMMID = "-" + strings.Repeat("A1", 31) + "z" }, ""},
		{"vmm id of 65", func(c *shim.Config) { c.VMMID = strings.Repeat("a", 65) }, "Firecracker's rule"},
		{"relative dir", func(c *shim.Config) { c.Dir = "vm" }, "dir \"vm\""},
		{"dir too long", func(c *shim.Config) { c.Dir = "/" + strings.Repeat("d", 100) }, "too long"},
		{"relative vmm", func(c *shim.Config) { c.VMM = "firecracker" }, "vmm \"firecracker\""},
		{"vmm id with underscore", func(c *shim.Config) { c.VMMID = "a_b" }, "Firecracker's rule"},
		{"vmm arg api-sock", func(c *shim.Config) { c.VMMArgs = []string{"--api-sock=/x"} }, "sets --api-sock"},
		{"valid builtin", func(c *shim.Config) { c.VMM = shim.BuiltinVMM }, ""},
		{"builtin with args", func(c *shim.Config) { c.VMM, c.VMMArgs = shim.BuiltinVMM, []string{"--level", "Debug"} }, "takes no command-line arguments"},
		{"misspelt builtin", func(c *shim.Config) { c.VMM = "Builtin" }, `want "builtin" or an absolute path`},
		{"unknown pages", func(c *shim.Config) { c.Pages = "lazy" }, "pages \"lazy\""},
		{"serve without mem file", func(c *shim.Config) { c.MemFile = "" }, "mem file"},
		{"access log without prefetch", func(c *shim.Config) { c.Prefetch = false }, "prefetch is off"},
		{"none with mem file", func(c *shim.Config) { c.Pages, c.AccessLog, c.Prefetch = shim.PagesNone, "", false }, "need a page server"},
		{"record without log", func(c *shim.Config) { c.Pages, c.AccessLog, c.Prefetch = shim.PagesRecord, "", false }, "record log"},
		{"record with prefetch", func(c *shim.Config) { c.Pages, c.AccessLog, c.RecordLog = shim.PagesRecord, "", "/t/r" }, "without prefetch"},
		{"negative grace", func(c *shim.Config) { c.StopGrace = -time.Second }, "stop grace"},
		{"settle min above max", func(c *shim.Config) { c.SettleMin, c.SettleMax = 5*time.Second, time.Second }, "exceeds settle max"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.adjust(&c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("got %v, want valid", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	c := validConfig().WithDefaults()
	if c.SettleMax != 10*time.Second || c.SettleMin != 2*time.Second || c.HandshakeTimeout != 60*time.Second || c.CollectTimeout != time.Hour || c.StopGrace != 5*time.Second {
		t.Errorf("defaults: got %+v", c)
	}
	// A short maximum pulls the minimum down with it.
	c = shim.Config{SettleMax: time.Second}.WithDefaults()
	if c.SettleMin != time.Second {
		t.Errorf("settle min with max 1s: got %v, want 1s", c.SettleMin)
	}
}

func TestArgsRoundTrip(t *testing.T) {
	limited := validConfig()
	limited.PrefetchRate = 3 << 20
	odd := validConfig()
	odd.PrefetchRate = 50e6 // not a whole number of KiB
	for _, c := range []shim.Config{
		validConfig(), limited, odd,
		{ID: "build-x.1", Dir: "/d", VMM: "/v", VMMID: "build-x", VMMArgs: []string{"--level", "Debug", "--id-like"},
			Pages: shim.PagesRecord, MemFile: "/m", RecordLog: "/r", SettleMin: 100 * time.Millisecond, SettleMax: 3 * time.Second,
			ReadyTimeout: time.Second, HandshakeTimeout: 2 * time.Second, StopGrace: 3 * time.Second, CollectTimeout: time.Minute},
		{ID: "s", Dir: "/d", VMM: "/v"},
		{ID: "s", Dir: "/d", VMM: shim.BuiltinVMM, VMMID: "s"},
		{ID: "s", Dir: "/d", VMM: shim.BuiltinVMM, Procs: 1},
	} {
		got, err := shim.ParseArgs(c.Args())
		if err != nil {
			t.Fatalf("ParseArgs(%q): %v", c.Args(), err)
		}
		if want := c.WithDefaults(); !reflect.DeepEqual(got, want) {
			t.Errorf("round trip of %q:\ngot  %+v\nwant %+v", c.Args(), got, want)
		}
	}
}

func TestParseArgsRejects(t *testing.T) {
	base := []string{"--id", "s", "--dir", "/d", "--vmm", "/v"}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", append(base, "--turbo"), "turbo"},
		{"positional", append(base, "extra"), "unexpected argument \"extra\""},
		{"loose boolean", append(base, "--pages", "serve", "--mem-file", "/m", "--prefetch=maybe"), "maybe"},
		{"bad duration", append(base, "--stop-grace", "5"), "stop-grace"},
		{"bad rate", append(base, "--pages", "serve", "--mem-file", "/m", "--prefetch=on", "--prefetch-rate", "fast"), `invalid rate "fast"`},
		{"rate with a fraction", append(base, "--pages", "serve", "--mem-file", "/m", "--prefetch=on", "--prefetch-rate", "1.5MiB/s"), "200MiB/s"},
		{"procs not a number", append(base, "--procs", "many"), "procs"},
		{"procs out of range", append(base, "--procs", "300"), "procs 300: want 0 (automatic) to 256"},
		{"invalid config", []string{"--id", "s"}, "dir"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := shim.ParseArgs(tt.args)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
