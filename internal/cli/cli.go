// Package cli is the thaw command line: Docker-like verbs that talk to thawd
// through internal/thawapi, human tables by default and --json everywhere,
// and "thaw daemon", which runs thawd in the foreground. Run returns the
// exit code: 0 on success, 1 when the operation failed, 2 for a usage
// error.
//
// Verbs: version, ls, inspect, create, exec, cp, pause, resume, rm,
// template ls|inspect|build|register|rm, settings, daemon. exec streams and
// exits with the command's exit code; template build shows the build log as
// its progress.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/thawvm/thaw/internal/conf"
	"github.com/thawvm/thaw/internal/daemon"
	"github.com/thawvm/thaw/internal/thawapi"
)

// DefaultSocket is thawd's default API socket.
const DefaultSocket = "/run/thaw/thawd.sock"

// Env is what Run reads and writes besides its arguments.
type Env struct {
	Stdout, Stderr io.Writer
	// LookupEnv and Environ are os.LookupEnv and os.Environ in thaw.
	LookupEnv func(string) (string, bool)
	Environ   []string
	// Now is the clock for ages; nil means time.Now.
	Now func() time.Time
	// Stdin is what exec -i and cp - read; nil means none.
	Stdin io.Reader
}

const usage = `usage: thaw [--socket PATH | --addr HOST:PORT --token-file FILE] [--json] COMMAND

commands:
  version                 thaw's and thawd's versions
  ls                      list sandboxes
  inspect ID              show a sandbox, with the timing of its create
  create [--id ID] [--ttl DUR] [--env K=V]... TEMPLATE
                          restore a new sandbox from a template; prints its create timing
  exec [-i] [--timeout DUR] [--env K=V]... [--workdir DIR] [--user U] ID [--] CMD [ARGS...]
                          run a command in a sandbox; exits with its exit code
  cp [--mode 0644] SRC DST  copy a file in or out: LOCAL ID:/PATH or ID:/PATH LOCAL ('-': stdin/stdout)
  pause ID...             snapshot sandboxes to disk and stop their VMs
  resume ID...            restore paused sandboxes in place
  rm ID...                delete sandboxes
  template ls             list templates
  template inspect NAME   show a template and its builds
  template build NAME --image PATH [--kind dir|tar|oci|docker|ext4] [--ref REF] [--run CMD]... [--env K=V]...
                 [--workdir DIR] [--start CMD] [--ready-serial TEXT] [--vcpus N] [--memory-mib N] [--disk-mib N]
                          build a template from an image: steps, start command, snapshot; the log is the progress
  template register NAME --vmstate F --memory F --rootfs F --vcpus N --memory-mib N [--kernel F] [--ready-serial TEXT]
                          register an existing snapshot as the template's current build
  template rm [--force] NAME
                          delete a template no sandbox uses (--force: delete its sandboxes first)
  settings [--uffd=on|off] [--max-concurrent-restores N]
                          show or change thawd's run-time settings
  daemon [THAWD FLAGS]    run thawd in the foreground (thaw daemon -h lists its flags)

--socket defaults to $THAW_SOCKET, else ` + DefaultSocket + `.
`

// usageError is a mistake in the command line (exit code 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// Run runs the thaw command line args (without the program name) and
// returns its exit code.
func Run(ctx context.Context, args []string, env Env) int {
	if env.Now == nil {
		env.Now = time.Now
	}
	err := run(ctx, args, env)
	var ue *usageError
	var ec *exitCodeError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ec):
		return ec.code
	case errors.As(err, &ue):
		fmt.Fprintf(env.Stderr, "thaw: %v\n\n%s", err, usage)
		return 2
	default:
		fmt.Fprintf(env.Stderr, "thaw: %v\n", err)
		return 1
	}
}

type globals struct {
	socket, addr, tokenFile string
	json                    bool
}

func run(ctx context.Context, args []string, env Env) error {
	fs := flag.NewFlagSet("thaw", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var g globals
	sock, ok := env.LookupEnv("THAW_SOCKET")
	if !ok || sock == "" {
		sock = DefaultSocket
	}
	fs.StringVar(&g.socket, "socket", sock, "thawd's unix socket")
	fs.StringVar(&g.addr, "addr", "", "thawd's TCP address (host:port) instead of the socket")
	fs.StringVar(&g.tokenFile, "token-file", "", "file holding the bearer token for --addr")
	fs.BoolVar(&g.json, "json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(env.Stdout, usage)
			return err
		}
		return usagef("%v", err)
	}
	args = fs.Args()
	if len(args) == 0 {
		return usagef("no command given")
	}
	if args[0] == "daemon" {
		return daemon.Run(ctx, args[1:], env.LookupEnv, env.Environ, env.Stderr)
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	p := printer{out: env.Stdout, json: g.json, now: env.Now}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "version":
		if err := noArgs(cmd, rest); err != nil {
			return err
		}
		v, err := c.Version(ctx)
		if err != nil {
			return err
		}
		return p.version(v)
	case "ls":
		if err := noArgs(cmd, rest); err != nil {
			return err
		}
		sbs, err := c.Sandboxes(ctx)
		if err != nil {
			return err
		}
		return p.sandboxes(sbs)
	case "inspect":
		if len(rest) != 1 {
			return usagef("inspect takes one sandbox id")
		}
		sb, err := c.Sandbox(ctx, rest[0])
		if err != nil {
			return err
		}
		return p.sandbox(sb)
	case "create":
		return create(ctx, c, p, rest)
	case "rm":
		return remove(ctx, c, p, env, rest)
	case "pause", "resume":
		return pauseResume(ctx, c, p, env, cmd, rest)
	case "exec":
		return execCmd(ctx, c, p, env, rest)
	case "cp":
		return cp(ctx, c, p, env, rest)
	case "template":
		return g.template(ctx, c, p, rest)
	case "settings":
		return settings(ctx, c, p, rest)
	}
	return usagef("unknown command %q", args[0])
}

func noArgs(cmd string, rest []string) error {
	if len(rest) > 0 {
		return usagef("%s takes no arguments, got %q", cmd, rest)
	}
	return nil
}

func (g globals) client() (*thawapi.Client, error) {
	if g.addr == "" {
		if g.tokenFile != "" {
			return nil, usagef("--token-file goes with --addr")
		}
		return thawapi.NewUnix(g.socket), nil
	}
	if g.tokenFile == "" {
		return nil, usagef("--addr needs --token-file: thawd's TCP API requires a bearer token")
	}
	tok, err := os.ReadFile(g.tokenFile)
	if err != nil {
		return nil, fmt.Errorf("reading token: %w", err)
	}
	return thawapi.NewTCP(g.addr, strings.TrimSpace(string(tok))), nil
}

func (g globals) template(ctx context.Context, c *thawapi.Client, p printer, args []string) error {
	if len(args) == 0 {
		return usagef("template needs a subcommand: ls, inspect, build, register or rm")
	}
	switch args[0] {
	case "ls":
		if err := noArgs("template ls", args[1:]); err != nil {
			return err
		}
		ts, err := c.Templates(ctx)
		if err != nil {
			return err
		}
		return p.templates(ts)
	case "inspect":
		if len(args) != 2 {
			return usagef("template inspect takes one template name")
		}
		t, err := c.Template(ctx, args[1])
		if err != nil {
			return err
		}
		return p.template(t)
	case "register":
		return register(ctx, c, p, args[1:])
	case "build":
		return build(ctx, c, p, args[1:])
	case "rm":
		fs := newFlags("template rm")
		force := fs.Bool("force", false, "delete the template's sandboxes first")
		if err := fs.Parse(args[1:]); err != nil {
			return usagef("template rm: %v", err)
		}
		if fs.NArg() != 1 {
			return usagef("template rm takes one template name")
		}
		args = []string{"rm", fs.Arg(0)}
		if err := c.DeleteTemplate(ctx, args[1], *force); err != nil {
			return err
		}
		if p.json {
			return p.asJSON(map[string]string{"deleted": args[1]})
		}
		_, err := fmt.Fprintln(p.out, args[1])
		return err
	}
	return usagef("unknown template subcommand %q", args[0])
}

// boolFlag is a flag that parses strictly (conf.ParseBool) and remembers
// whether it was given.
type boolFlag struct {
	v   bool
	set bool
}

func (b *boolFlag) String() string { return strconv.FormatBool(b.v) }
func (b *boolFlag) Set(s string) error {
	v, err := conf.ParseBool(s)
	if err != nil {
		return err
	}
	b.v, b.set = v, true
	return nil
}

func settings(ctx context.Context, c *thawapi.Client, p printer, args []string) error {
	fs := flag.NewFlagSet("settings", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var uffd boolFlag
	fs.Var(&uffd, "uffd", "restore through the page server (on/off)")
	restores := fs.Int("max-concurrent-restores", 0, "restore slot limit")
	if err := fs.Parse(args); err != nil {
		return usagef("settings: %v", err)
	}
	if fs.NArg() > 0 {
		return usagef("settings takes only flags, got %q", fs.Args())
	}
	var patch thawapi.SettingsPatch
	if uffd.set {
		patch.UFFD = &uffd.v
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "max-concurrent-restores" {
			patch.MaxConcurrentRestores = restores
		}
	})
	var s thawapi.Settings
	var err error
	if patch.UFFD == nil && patch.MaxConcurrentRestores == nil {
		s, err = c.Settings(ctx)
	} else {
		s, err = c.PatchSettings(ctx, patch)
	}
	if err != nil {
		return err
	}
	return p.settings(s)
}

// printer writes results as tables or JSON.
type printer struct {
	out  io.Writer
	json bool
	now  func() time.Time
}

func (p printer) asJSON(v any) error {
	enc := json.NewEncoder(p.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (p printer) version(v thawapi.Version) error {
	if p.json {
		return p.asJSON(map[string]string{"thaw": daemon.Version, "thawd": v.Version, "api": v.API})
	}
	_, err := fmt.Fprintf(p.out, "thaw %s\nthawd %s (API %s)\n", daemon.Version, v.Version, v.API)
	return err
}

func (p printer) table(header string, rows [][]string) error {
	tw := tabwriter.NewWriter(p.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

func (p printer) age(t time.Time) string {
	d := p.now().Sub(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return d.String()
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func msText(ms float64) string { return strconv.FormatFloat(ms, 'f', 1, 64) + "ms" }

// durText is ms as a duration to the millisecond (12.345s), for the
// longer phases of a build.
func durText(ms float64) string {
	return time.Duration(ms * float64(time.Millisecond)).Round(time.Millisecond).String()
}

func (p printer) sandboxes(sbs []thawapi.Sandbox) error {
	if p.json {
		return p.asJSON(nonNil(sbs))
	}
	var rows [][]string
	for _, sb := range sbs {
		rows = append(rows, []string{sb.ID, sb.Template, sb.Build, sb.State, msText(sb.CreateMS), p.age(sb.CreatedAt)})
	}
	return p.table("ID\tTEMPLATE\tBUILD\tSTATE\tCREATE\tAGE", rows)
}

func (p printer) sandbox(sb thawapi.Sandbox) error {
	if p.json {
		return p.asJSON(sb)
	}
	tw := tabwriter.NewWriter(p.out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "id\t%s\ntemplate\t%s (build %s)\nstate\t%s\n", sb.ID, sb.Template, sb.Build, sb.State)
	if sb.Reason != "" {
		fmt.Fprintf(tw, "reason\t%s\n", sb.Reason)
	}
	backend := "file"
	if sb.UFFD {
		backend = "uffd"
	}
	fmt.Fprintf(tw, "memory\t%s\n", backend)
	if pg := sb.Pages; pg != nil {
		mode := pg.Prefetch
		switch pg.Prefetch {
		case thawapi.PrefetchOrdered:
			mode = fmt.Sprintf("ordered (%d pages in the access log's order)", pg.OrderPages)
		case thawapi.PrefetchFileOrder:
			mode = "in file order (the build has no usable access log)"
		}
		done := "running"
		if pg.PrefetchDone {
			done = "done after " + msText(pg.PrefetchMS)
		}
		if pg.PrefetchRate != 0 {
			done += fmt.Sprintf(" (limited to %s, waited %s)", conf.ByteRate(pg.PrefetchRate), durText(pg.PrefetchWaitMS))
		}
		if pg.Prefetch == thawapi.PrefetchOff {
			fmt.Fprintf(tw, "prefetch\toff\n")
		} else {
			fmt.Fprintf(tw, "prefetch\t%s: %d pages prefetched, %s\n", mode, pg.PrefetchedPages, done)
		}
		fmt.Fprintf(tw, "faults\t%d (%d pages installed; %d zero pages in all)\n", pg.Faults, pg.FaultPages, pg.ZeroPages)
	}
	fmt.Fprintf(tw, "created\t%s (%s ago)\n", sb.CreatedAt.Format(time.RFC3339), p.age(sb.CreatedAt))
	if sb.ExpiresAt != nil {
		fmt.Fprintf(tw, "expires\t%s\n", sb.ExpiresAt.Format(time.RFC3339))
	}
	if sb.ShimPID != 0 {
		fmt.Fprintf(tw, "shim pid\t%d\n", sb.ShimPID)
	}
	fmt.Fprintf(tw, "create\t%s\n", msText(sb.CreateMS))
	for _, ph := range sb.Create {
		fmt.Fprintf(tw, "  %s\t%s\n", ph.Name, msText(ph.DurationMS))
	}
	return tw.Flush()
}

func (p printer) templates(ts []thawapi.Template) error {
	if p.json {
		return p.asJSON(nonNil(ts))
	}
	var rows [][]string
	for _, t := range ts {
		cur := t.Current
		if cur == "" {
			cur = "-"
		}
		rows = append(rows, []string{t.Name, cur, strconv.Itoa(len(t.Builds)), p.age(t.CreatedAt)})
	}
	return p.table("NAME\tCURRENT\tBUILDS\tAGE", rows)
}

func (p printer) template(t thawapi.Template) error {
	if p.json {
		return p.asJSON(t)
	}
	fmt.Fprintf(p.out, "name     %s\ncurrent  %s\n\n", t.Name, t.Current)
	var rows [][]string
	for _, b := range t.Builds {
		rec := "no"
		if b.Recorded {
			rec = "yes"
		}
		state := b.State
		if b.Reason != "" {
			state += ": " + b.Reason
		}
		rows = append(rows, []string{b.ID, state, strconv.Itoa(b.VCPUs), strconv.Itoa(b.MemoryMiB) + "MiB", strconv.Itoa(b.DiskMiB) + "MiB", rec, p.age(b.CreatedAt)})
	}
	if err := p.table("BUILD\tSTATE\tVCPUS\tMEMORY\tDISK\tRECORDED\tAGE", rows); err != nil {
		return err
	}
	for _, b := range t.Builds {
		if b.ID != t.Current {
			continue
		}
		// The current build's phases: how long the build took, and where.
		tw := tabwriter.NewWriter(p.out, 0, 0, 2, ' ', 0)
		var total float64
		for _, ph := range b.Timings {
			total += ph.DurationMS
		}
		fmt.Fprintf(tw, "\nbuild %s\t%s\n", b.ID, durText(total))
		for _, ph := range b.Timings {
			fmt.Fprintf(tw, "  %s\t%s\n", ph.Name, durText(ph.DurationMS))
		}
		if b.Recorded {
			fmt.Fprintf(tw, "access log\t%d pages (%.1f MiB of %d MiB)\n", b.AccessLogPages, float64(b.AccessLogPages*4096)/(1<<20), b.MemoryMiB)
		}
		return tw.Flush()
	}
	return nil
}

func (p printer) settings(s thawapi.Settings) error {
	if p.json {
		return p.asJSON(s)
	}
	onOff := map[bool]string{true: "on", false: "off"}
	_, err := fmt.Fprintf(p.out, "uffd                     %s\nmax-concurrent-restores  %d (in use %d, waiting %d)\n",
		onOff[s.UFFD], s.RestoreSlots.Limit, s.RestoreSlots.InUse, s.RestoreSlots.Waiting)
	return err
}

// nonNil makes an empty list print as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
