package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/thawvm/thaw/internal/thawapi"
)

// exitCodeError makes Run exit with a command's exit code (thaw exec)
// without printing anything.
type exitCodeError struct{ code int }

func (e *exitCodeError) Error() string { return fmt.Sprintf("exit code %d", e.code) }

// listFlag collects a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

func create(ctx context.Context, c *thawapi.Client, p printer, args []string) error {
	fs := newFlags("create")
	id := fs.String("id", "", "sandbox id (default: thawd picks one)")
	ttl := fs.Duration("ttl", 0, "delete the sandbox this long after its create (e.g. 30m)")
	var env listFlag
	fs.Var(&env, "env", "KEY=VALUE for every exec (repeatable)")
	if err := fs.Parse(args); err != nil {
		return usagef("create: %v", err)
	}
	if fs.NArg() != 1 {
		return usagef("create takes one template name, got %q", fs.Args())
	}
	if *ttl < 0 || (*ttl > 0 && *ttl < time.Second) {
		return usagef("create: --ttl %v: want none or at least 1s", *ttl)
	}
	sb, err := c.CreateSandbox(ctx, thawapi.CreateSandbox{ID: *id, Template: fs.Arg(0), TTLSeconds: int64(ttl.Seconds()), Env: env})
	if err != nil {
		return err
	}
	return p.sandbox(sb)
}

// eachID runs do for every id, going on after a failure, and returns the
// first error.
func eachID(cmd string, ids []string, p printer, stderr io.Writer, do func(id string) (any, error)) error {
	if len(ids) == 0 {
		return usagef("%s takes one or more sandbox ids", cmd)
	}
	var first error
	var out []any
	for _, id := range ids {
		v, err := do(id)
		if err != nil {
			if first == nil {
				first = err
			}
			if len(ids) > 1 {
				fmt.Fprintf(stderr, "thaw: %s %s: %v\n", cmd, id, err)
			}
			continue
		}
		out = append(out, v)
		if !p.json {
			fmt.Fprintln(p.out, id)
		}
	}
	if p.json && out != nil {
		if err := p.asJSON(out); err != nil {
			return err
		}
	}
	return first
}

func remove(ctx context.Context, c *thawapi.Client, p printer, env Env, args []string) error {
	return eachID("rm", args, p, env.Stderr, func(id string) (any, error) {
		return map[string]string{"deleted": id}, c.DeleteSandbox(ctx, id)
	})
}

func pauseResume(ctx context.Context, c *thawapi.Client, p printer, env Env, cmd string, args []string) error {
	return eachID(cmd, args, p, env.Stderr, func(id string) (any, error) {
		if cmd == "pause" {
			return c.PauseSandbox(ctx, id)
		}
		return c.ResumeSandbox(ctx, id)
	})
}

// execCmd runs a command in a sandbox, streaming its output (and stdin with
// -i), and exits with its exit code.
func execCmd(ctx context.Context, c *thawapi.Client, p printer, env Env, args []string) error {
	fs := newFlags("exec")
	interactive := fs.Bool("i", false, "stream stdin to the command")
	timeout := fs.Duration("timeout", 0, "kill the command after this long")
	workdir := fs.String("workdir", "", "working directory in the sandbox")
	user := fs.String("user", "", "user to run as")
	var envs listFlag
	fs.Var(&envs, "env", "KEY=VALUE (repeatable)")
	if err := fs.Parse(args); err != nil {
		return usagef("exec: %v", err)
	}
	rest := fs.Args()
	if len(rest) > 0 && rest[0] == "--" {
		rest = rest[1:]
	}
	if len(rest) < 2 {
		return usagef("exec takes a sandbox id and a command: thaw exec ID [--] CMD [ARGS...]")
	}
	if *timeout < 0 {
		return usagef("exec: --timeout %v is negative", *timeout)
	}
	id, argv := rest[0], rest[1:]
	if len(argv) > 0 && argv[0] == "--" {
		argv = argv[1:]
	}
	var stdin io.Reader
	if *interactive {
		if env.Stdin == nil {
			return usagef("exec -i: no stdin")
		}
		stdin = env.Stdin
	}
	req := thawapi.ExecRequest{Argv: argv, Env: envs, Cwd: *workdir, User: *user, TimeoutMS: timeout.Milliseconds()}
	if p.json {
		// --json: the output is collected and printed with the status.
		var stdout, stderr strings.Builder
		st, err := c.Exec(ctx, id, req, stdin, &stdout, &stderr)
		if err != nil {
			return err
		}
		if err := p.asJSON(map[string]any{"stdout": stdout.String(), "stderr": stderr.String(), "exit": st}); err != nil {
			return err
		}
		return exitStatus(st)
	}
	st, err := c.Exec(ctx, id, req, stdin, p.out, env.Stderr)
	if err != nil {
		return err
	}
	return exitStatus(st)
}

// exitStatus turns a command's status into thaw's exit: its code, or 128 +
// the signal as a shell reports it.
func exitStatus(st thawapi.ExitStatus) error {
	switch {
	case st.Signal != 0:
		return &exitCodeError{128 + st.Signal}
	case st.Code != 0:
		return &exitCodeError{st.Code}
	}
	return nil
}

// cp copies a file into or out of a sandbox: thaw cp LOCAL ID:/PATH or
// thaw cp ID:/PATH LOCAL ("-" is stdin or stdout).
func cp(ctx context.Context, c *thawapi.Client, p printer, env Env, args []string) error {
	fs := newFlags("cp")
	mode := fs.Uint("mode", 0, "permission bits of an uploaded file (octal, e.g. 0755; default 0644)")
	if err := fs.Parse(args); err != nil {
		return usagef("cp: %v", err)
	}
	if fs.NArg() != 2 {
		return usagef("cp takes a source and a destination, one of them ID:/path")
	}
	src, dst := fs.Arg(0), fs.Arg(1)
	sid, spath, sRemote := remote(src)
	did, dpath, dRemote := remote(dst)
	switch {
	case sRemote == dRemote:
		return usagef("cp: exactly one of %q and %q must be ID:/path", src, dst)
	case dRemote:
		var r io.Reader = env.Stdin
		if src != "-" {
			f, err := os.Open(src)
			if err != nil {
				return err
			}
			defer f.Close()
			r = f
			if *mode == 0 {
				if fi, err := f.Stat(); err == nil {
					*mode = uint(fi.Mode().Perm())
				}
			}
		}
		if r == nil {
			return usagef("cp: no stdin")
		}
		fi, err := c.Upload(ctx, did, dpath, r, uint32(*mode), false)
		if err != nil {
			return err
		}
		if p.json {
			return p.asJSON(fi)
		}
		return nil
	}
	rc, err := c.Download(ctx, sid, spath)
	if err != nil {
		return err
	}
	defer rc.Close()
	if dst == "-" {
		_, err = io.Copy(p.out, rc)
		return err
	}
	// Written next to the destination and renamed, so a failed download
	// leaves no partial file.
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".thaw-cp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, rc); err != nil {
		tmp.Close()
		return fmt.Errorf("downloading %s: %w", src, err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

// remote splits "ID:/path"; a local path (no colon before the first slash)
// is not remote.
func remote(s string) (id, path string, ok bool) {
	i := strings.IndexByte(s, ':')
	if i <= 0 || strings.Contains(s[:i], "/") {
		return "", "", false
	}
	return s[:i], s[i+1:], true
}

// register registers an existing snapshot as a template build.
func register(ctx context.Context, c *thawapi.Client, p printer, args []string) error {
	fs := newFlags("template register")
	var r thawapi.RegisterTemplate
	fs.StringVar(&r.VMState, "vmstate", "", "VM state file of the snapshot (required)")
	fs.StringVar(&r.Memory, "memory", "", "memory file of the snapshot (required)")
	fs.StringVar(&r.Rootfs, "rootfs", "", "root disk image (required)")
	fs.StringVar(&r.Kernel, "kernel", "", "kernel the snapshot was booted from")
	fs.IntVar(&r.VCPUs, "vcpus", 0, "vCPUs of the snapshotted VM (required)")
	fs.IntVar(&r.MemoryMiB, "memory-mib", 0, "memory of the snapshotted VM in MiB (required)")
	serial := fs.String("ready-serial", "", "ready when this appears on the serial console (guests without an agent); default: the agent's health")
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usagef("template register takes a name first: thaw template register NAME --vmstate F --memory F --rootfs F --vcpus N --memory-mib N")
	}
	name := args[0]
	if err := fs.Parse(args[1:]); err != nil {
		return usagef("template register: %v", err)
	}
	if fs.NArg() > 0 {
		return usagef("template register: unexpected arguments %q", fs.Args())
	}
	for _, f := range []*string{&r.VMState, &r.Memory, &r.Rootfs, &r.Kernel} {
		if *f != "" {
			abs, err := filepath.Abs(*f)
			if err != nil {
				return err
			}
			*f = abs
		}
	}
	r.Ready = &thawapi.ReadyCheck{Kind: "agent"}
	if *serial != "" {
		r.Ready = &thawapi.ReadyCheck{Kind: "serial", Marker: *serial}
	}
	t, err := c.RegisterTemplate(ctx, name, r)
	if err != nil {
		return err
	}
	return p.template(t)
}
