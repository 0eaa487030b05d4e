package config

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/thawvm/thaw/internal/errdefs"
)

// DefaultFile is the config file read when neither the -config flag nor
// THAW_CONFIG names one. Unlike a named file, it may be missing.
const DefaultFile = "/etc/thaw/thawd.toml"

// EnvConfigFile names the config file in the environment.
const EnvConfigFile = "THAW_CONFIG"

// otherEnv are THAW_ variables that belong to other components or to the
// tests, which UnknownEnv must not report.
var otherEnv = []string{EnvConfigFile, "THAW_REQUIRE_KVM"}

// ApplyFile reads the TOML config file at path into c. Only the keys the
// file sets change.
func (c *Config) ApplyFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return errdefs.Mark(fmt.Errorf("reading config file: %w", err), errdefs.ErrInvalidArgument)
	}
	return c.ApplyTOML(path, data)
}

// ApplyTOML parses data, the config file called name, into c. It is strict:
// unknown keys, tables and values of the wrong TOML type are errors naming
// the file and the key.
func (c *Config) ApplyTOML(name string, data []byte) error {
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		return errdefs.InvalidArgument("config file %s: %w", name, err)
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	slices.Sort(keys) // report problems in a stable order
	next := *c
	var errs []error
	for _, k := range keys {
		s, ok := lookupKey(k)
		if !ok {
			errs = append(errs, fmt.Errorf("config file %s: unknown key %q (known keys: %s)", name, k, knownKeys()))
			continue
		}
		if err := setFromTOML(s.field(&next), raw[k]); err != nil {
			errs = append(errs, fmt.Errorf("config file %s: key %q: %w", name, k, err))
		}
	}
	if len(errs) > 0 {
		return errdefs.Mark(errors.Join(errs...), errdefs.ErrInvalidArgument)
	}
	*c = next
	return nil
}

// ApplyEnv sets, in c, every setting whose THAW_ variable lookup finds with a
// non-empty value. lookup is os.LookupEnv in thawd.
func (c *Config) ApplyEnv(lookup func(string) (string, bool)) error {
	next := *c
	var errs []error
	for _, s := range settings {
		v, ok := lookup(s.Env())
		if !ok || strings.TrimSpace(v) == "" {
			continue
		}
		if err := parseInto(s.field(&next), v); err != nil {
			errs = append(errs, fmt.Errorf("environment %s: %w", s.Env(), err))
		}
	}
	if len(errs) > 0 {
		return errdefs.Mark(errors.Join(errs...), errdefs.ErrInvalidArgument)
	}
	*c = next
	return nil
}

// UnknownEnv returns the THAW_ variables in environ (os.Environ's form) that
// no setting reads, most likely typos; thawd logs them as warnings. They are
// not errors because other Thaw components read THAW_ variables too.
func UnknownEnv(environ []string) []string {
	var unknown []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "THAW_") || slices.Contains(otherEnv, name) {
			continue
		}
		if !slices.ContainsFunc(settings, func(s Setting) bool { return s.Env() == name }) {
			unknown = append(unknown, name)
		}
	}
	return unknown
}

// Flags are the command-line flags of every setting, plus -config. Values
// are checked as they are parsed (so the flag package reports a bad one
// with the flag's name) but land in a Config only through Apply, after the
// file and the environment.
type Flags struct {
	config string
	// set holds the flags given, in command-line order.
	set []givenFlag
}

type givenFlag struct {
	s    Setting
	text string
}

type flagValue struct {
	f *Flags
	s Setting
}

func (v *flagValue) String() string {
	if v == nil || v.f == nil {
		return ""
	}
	for i := len(v.f.set) - 1; i >= 0; i-- {
		if v.f.set[i].s.Key == v.s.Key {
			return v.f.set[i].text
		}
	}
	return v.s.Default()
}

func (v *flagValue) Set(text string) error {
	scratch := Default()
	if err := parseInto(v.s.field(&scratch), text); err != nil {
		return err
	}
	v.f.set = append(v.f.set, givenFlag{v.s, text})
	return nil
}

// IsBoolFlag lets boolean settings be given as a bare -uffd.
func (v *flagValue) IsBoolFlag() bool {
	_, ok := v.s.field(&Config{}).(*bool)
	return ok
}

// RegisterFlags defines -config and one flag per setting on fset.
func RegisterFlags(fset *flag.FlagSet) *Flags {
	f := &Flags{}
	fset.StringVar(&f.config, "config", "", fmt.Sprintf("TOML config file (env %s; default %s if it exists)", EnvConfigFile, DefaultFile))
	for _, s := range settings {
		fset.Var(&flagValue{f: f, s: s}, s.Flag(), fmt.Sprintf("%s (env %s)", s.Help, s.Env()))
	}
	return f
}

// ConfigFile returns the -config flag's value.
func (f *Flags) ConfigFile() string { return f.config }

// Apply sets, in c, every flag given on the command line, in order.
func (f *Flags) Apply(c *Config) error {
	next := *c
	for _, fv := range f.set {
		if err := parseInto(fv.s.field(&next), fv.text); err != nil {
			return errdefs.InvalidArgument("flag -%s: %w", fv.s.Flag(), err)
		}
	}
	*c = next
	return nil
}

// Load builds thawd's configuration from its command line (args, without the
// program name, parsed with fset) and environment (lookup, os.LookupEnv in
// thawd): defaults, then the config file (-config, else THAW_CONFIG, else
// DefaultFile if it exists), then THAW_ variables, then flags; then Validate.
func Load(fset *flag.FlagSet, args []string, lookup func(string) (string, bool)) (Config, error) {
	flags := RegisterFlags(fset)
	if err := fset.Parse(args); err != nil {
		return Config{}, errdefs.Mark(err, errdefs.ErrInvalidArgument)
	}
	if fset.NArg() > 0 {
		return Config{}, errdefs.InvalidArgument("unexpected arguments %q: thawd takes only flags", fset.Args())
	}
	c := Default()
	path := flags.ConfigFile()
	if path == "" {
		path, _ = lookup(EnvConfigFile)
	}
	if path == "" {
		if _, err := os.Stat(DefaultFile); err == nil {
			path = DefaultFile
		} else if !errors.Is(err, fs.ErrNotExist) {
			return Config{}, fmt.Errorf("checking for %s: %w", DefaultFile, err)
		}
	}
	if path != "" {
		if err := c.ApplyFile(path); err != nil {
			return Config{}, err
		}
	}
	if err := c.ApplyEnv(lookup); err != nil {
		return Config{}, err
	}
	if err := flags.Apply(&c); err != nil {
		return Config{}, err
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}
