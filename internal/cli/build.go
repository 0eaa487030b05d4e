package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/thawvm/thaw/internal/thawapi"
)

// imageKind is the source kind for path when --kind is not given: an OCI
// layout directory (oci-layout file), another directory, an .ext4/.img
// file, else a tarball. A docker-save archive needs --kind docker.
func imageKind(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("--image: %w", err)
	}
	switch {
	case fi.IsDir():
		if _, err := os.Stat(filepath.Join(path, "oci-layout")); err == nil {
			return "oci", nil
		}
		return "dir", nil
	case strings.HasSuffix(path, ".ext4") || strings.HasSuffix(path, ".img"):
		return "ext4", nil
	}
	return "tar", nil
}

// build starts a template build and follows it: the build log is the
// progress display (with --json, only the final run is printed). It fails
// when the build fails.
func build(ctx context.Context, c *thawapi.Client, p printer, args []string) error {
	const use = "thaw template build NAME --image PATH [--kind dir|tar|oci|docker|ext4] [--ref REF] [--run CMD]... [--env K=V]... [--workdir DIR] [--start CMD] [--warmup CMD]... [--ready-serial TEXT] --vcpus N --memory-mib N [--disk-mib N]"
	fs := newFlags("template build")
	var r thawapi.BuildTemplate
	var runs, env, warmups listFlag
	image := fs.String("image", "", "image source on the host: directory, tarball, OCI layout, docker-save archive or ext4 image (required)")
	fs.StringVar(&r.Image.Kind, "kind", "", "image kind (default: guessed from --image; docker archives need --kind docker)")
	fs.StringVar(&r.Image.Ref, "ref", "", "image ref (oci) or tag (docker) when the source holds several")
	fs.Var(&runs, "run", "a build step, run with /bin/sh -c (repeatable, in order)")
	fs.Var(&env, "env", "K=V for every step (repeatable)")
	workdir := fs.String("workdir", "", "working directory of every step")
	fs.StringVar(&r.Start, "start", "", "command started detached after the steps, running in every sandbox")
	fs.Var(&warmups, "warmup", "a command and its arguments (split into words like a shell, run without one) that the recording run "+
		"runs through the agent, so every sandbox prefetches the pages it touches: --warmup 'python3 -c pass' (repeatable, in order; one that fails fails the build)")
	serial := fs.String("ready-serial", "", "ready when this appears on the serial console; default: the agent's health")
	fs.IntVar(&r.VCPUs, "vcpus", 1, "vCPUs")
	fs.IntVar(&r.MemoryMiB, "memory-mib", 256, "memory in MiB")
	fs.IntVar(&r.DiskMiB, "disk-mib", 1024, "root filesystem size in MiB (not for ext4 images)")
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usagef("template build takes a name first: %s", use)
	}
	r.Name = args[0]
	if err := fs.Parse(args[1:]); err != nil {
		return usagef("template build: %v", err)
	}
	if fs.NArg() > 0 {
		return usagef("template build: unexpected arguments %q", fs.Args())
	}
	if *image == "" {
		return usagef("template build: --image is required: %s", use)
	}
	abs, err := filepath.Abs(*image)
	if err != nil {
		return err
	}
	r.Image.Path = abs
	if r.Image.Kind == "" {
		if r.Image.Kind, err = imageKind(abs); err != nil {
			return err
		}
	}
	for _, cmd := range runs {
		r.Steps = append(r.Steps, thawapi.BuildStep{Run: cmd, Env: env, Workdir: *workdir})
	}
	if len(runs) == 0 && (len(env) > 0 || *workdir != "") {
		return usagef("template build: --env and --workdir apply to --run steps, and there are none")
	}
	for _, w := range warmups {
		argv, err := splitWords(w)
		if err != nil {
			return usagef("template build: --warmup %q: %v", w, err)
		}
		r.Warmup = append(r.Warmup, argv)
	}
	r.Ready = &thawapi.ReadyCheck{Kind: "agent"}
	if *serial != "" {
		r.Ready = &thawapi.ReadyCheck{Kind: "serial", Marker: *serial}
	}
	run, err := c.BuildTemplate(ctx, r)
	if err != nil {
		return err
	}
	var progress io.Writer = p.out
	if p.json {
		progress = io.Discard
	} else {
		fmt.Fprintf(p.out, "==> build %s of template %s started\n", run.ID, run.Template)
	}
	if err := c.BuildLog(ctx, run.Template, run.ID, true, progress); err != nil {
		return fmt.Errorf("following build %s: %w (it goes on in thawd; see thaw template inspect %s)", run.ID, err, run.Template)
	}
	if run, err = c.BuildRun(ctx, run.Template, run.ID); err != nil {
		return err
	}
	if run.State == "building" {
		return fmt.Errorf("build %s: the log ended while the build still runs (thawd stopping?); see thaw template inspect %s", run.ID, run.Template)
	}
	if p.json {
		if err := p.asJSON(run); err != nil {
			return err
		}
	}
	if run.State != "ready" {
		return fmt.Errorf("build %s of template %s failed: %s", run.ID, run.Template, run.Reason)
	}
	if !p.json {
		t, err := c.Template(ctx, run.Template)
		if err != nil {
			return err
		}
		return p.template(t)
	}
	return nil
}
