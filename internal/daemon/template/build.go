package template

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/thawvm/thaw/internal/daemon/layout"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/image"
)

// Image source kinds of a BuildSpec.
const (
	SourceDir    = "dir"
	SourceTar    = "tar"
	SourceOCI    = "oci"
	SourceDocker = "docker"
	// SourceExt4 is a prebuilt ext4 image used as it is (it must already
	// have the agent as init).
	SourceExt4 = "ext4"
)

// ImageSource is where a build's root filesystem comes from: Path is an
// absolute host path; Ref picks an image in an OCI layout (ref name) or a
// docker-save archive (tag).
type ImageSource struct {
	Kind string
	Path string
	Ref  string
}

// Step is one command run in the build VM through the agent; a non-zero
// exit fails the build.
type Step struct {
	// Shell is run as /bin/sh -c Shell.
	Shell   string
	Env     []string
	Workdir string
}

// BuildSpec is a template build from an image.
type BuildSpec struct {
	Name   string
	Source ImageSource
	Steps  []Step
	// Start, if set, is started detached after the steps (/bin/sh -c).
	Start string
	Ready store.ReadyCheck
	// Warmup are commands (each an argv) the recording run executes
	// through the agent after init, in order, so that the pages they touch
	// are in the access log and prefetched into every sandbox: a
	// sandbox's first run of them then finds its pages already there. One
	// that fails fails the build.
	Warmup    [][]string
	VCPUs     int
	MemoryMiB int
	DiskMiB   int
}

// Validate reports what is wrong with s, naming the fields. It checks that
// the source exists, not that it parses (the image build does).
func (s BuildSpec) Validate() error {
	if err := store.ValidateID("template name", s.Name); err != nil {
		return err
	}
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, errdefs.InvalidArgument(format, a...)) }
	switch s.Source.Kind {
	case SourceDir, SourceTar, SourceOCI, SourceDocker, SourceExt4:
		if !filepath.IsAbs(s.Source.Path) {
			bad("source.path %q: want an absolute path on the host", s.Source.Path)
		} else if fi, err := os.Stat(s.Source.Path); err != nil {
			bad("source.path: %v", err)
		} else if dirWanted := s.Source.Kind == SourceDir || s.Source.Kind == SourceOCI; dirWanted != fi.IsDir() {
			if dirWanted {
				bad("source.path %s: a %s source is a directory", s.Source.Path, s.Source.Kind)
			} else {
				bad("source.path %s: a %s source is a file", s.Source.Path, s.Source.Kind)
			}
		}
		if s.Source.Ref != "" && s.Source.Kind != SourceOCI && s.Source.Kind != SourceDocker {
			bad("source.ref %q: only oci and docker sources have refs", s.Source.Ref)
		}
	default:
		bad("source.kind %q: want %s, %s, %s, %s or %s", s.Source.Kind, SourceDir, SourceTar, SourceOCI, SourceDocker, SourceExt4)
	}
	for i, st := range s.Steps {
		if st.Shell == "" {
			bad("steps[%d].run is empty: give a shell command", i)
		}
		if st.Workdir != "" && !filepath.IsAbs(st.Workdir) {
			bad("steps[%d].workdir %q: want an absolute path in the guest", i, st.Workdir)
		}
	}
	if s.VCPUs < 1 || s.VCPUs > 32 {
		bad("vcpus %d: want 1 to 32", s.VCPUs)
	}
	if s.MemoryMiB < 64 {
		bad("memory_mib %d: want at least 64", s.MemoryMiB)
	}
	if s.Source.Kind != SourceExt4 && s.DiskMiB < image.MinDiskSize>>20 {
		bad("disk_mib %d: want at least %d", s.DiskMiB, image.MinDiskSize>>20)
	}
	if err := s.Ready.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := checkWarmup(s.Warmup, s.Ready); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// checkWarmup checks warm-up commands and that the ready check can run
// them: they go through the agent.
func checkWarmup(cmds [][]string, ready store.ReadyCheck) error {
	if err := store.ValidateWarmup(cmds); err != nil {
		return err
	}
	if len(cmds) > 0 && ready.Kind == store.ReadySerial {
		return errdefs.InvalidArgument("warmup: warm-up commands run through the agent, and a serial ready check (%q) says the guest has none: drop the warm-up or use the agent ready check", ready.Marker)
	}
	return nil
}

func (s ImageSource) source() image.Source {
	switch s.Kind {
	case SourceDir:
		return image.Dir(s.Path)
	case SourceTar:
		return image.Tarball(s.Path)
	case SourceOCI:
		return image.OCILayout{Path: s.Path, Ref: s.Ref}
	case SourceDocker:
		return image.DockerArchive{Path: s.Path, Tag: s.Ref}
	}
	return nil
}

// RootDriveID is the build VM's root drive_id, recorded as the build's
// RootDrive so that sandboxes point it at their own disk.
const RootDriveID = "rootfs"

// BootRequest is what a Booter boots: the disk (a file in Dir the VM may
// write), the machine, and what to run once the agent answers.
type BootRequest struct {
	// ID is the ephemeral VM's id (store.EphemeralPrefix...).
	ID string
	// Dir is the VM's scratch directory; Rootfs is in it (drive
	// RootDriveID), and the snapshot is written to VMState and Memory in
	// it.
	Dir, Rootfs     string
	VMState, Memory string
	Kernel          string
	VCPUs           int
	MemoryMiB       int
	Steps           []Step
	Start           string
	Ready           store.ReadyCheck
	Env             []string
	Workdir         string
}

// Booter boots a build VM, runs the steps (their output into log), starts
// the start command, waits for the ready check, pauses, takes a Full
// snapshot into r.VMState/r.Memory and stops the VM, leaving no process
// behind whatever happens (internal/daemon/sandbox's Manager.BootSnapshot).
// It returns how long each of its phases took, in order.
type Booter func(ctx context.Context, r BootRequest, log io.Writer) ([]store.Phase, error)

// Builder runs template builds from images.
type Builder struct {
	Store  *store.Store
	Layout layout.Layout
	// Kernel is the guest kernel (config's KernelPath); Agent is the
	// static thaw-agent binary injected into images.
	Kernel, Agent string
	Boot          Booter
	// Record is the recording run (nil: prefetch off, none).
	Record Recorder
}

// Check reports what keeps b from building spec's kind of image (kernel,
// and the agent binary unless the source is an ext4 image, which must
// already hold its agent), so a request fails before a build is started.
func (b *Builder) Check(spec BuildSpec) error {
	if b.Boot == nil {
		return errdefs.Unavailable("template builds need a VMM and shim, and this thawd has none configured")
	}
	if len(spec.Warmup) > 0 && b.Record == nil {
		return errWarmupNoRecording
	}
	for _, f := range []struct{ what, path, fix string }{
		{"guest kernel", b.Kernel, "set kernel in thawd's config or THAW_KERNEL"},
		{"agent binary", b.Agent, "build it with CGO_ENABLED=0 go build ./cmd/thaw-agent and set agent in thawd's config"},
	} {
		if f.what == "agent binary" && spec.Source.Kind == SourceExt4 {
			continue // used as it is: nothing is injected
		}
		if f.path == "" {
			return errdefs.Unavailable("no %s configured: %s", f.what, f.fix)
		}
		fi, err := os.Stat(f.path)
		if err != nil {
			return errdefs.Unavailable("%s: %v: %s", f.what, err, f.fix)
		}
		if !fi.Mode().IsRegular() {
			return errdefs.Unavailable("%s %s is not a regular file: %s", f.what, f.path, f.fix)
		}
	}
	return nil
}

// Build runs spec to the end: root filesystem, build VM, snapshot, then
// Register (copy into a staged build, recording run, atomic publish).
// Progress and the steps' output go to log. A failed build leaves no
// files and no record behind.
func (b *Builder) Build(ctx context.Context, id string, spec BuildSpec, log io.Writer) (store.Template, error) {
	if err := spec.Validate(); err != nil {
		return store.Template{}, err
	}
	if err := b.Check(spec); err != nil {
		return store.Template{}, err
	}
	dir, err := b.Layout.ScratchDir(id + "-")
	if err != nil {
		return store.Template{}, err
	}
	defer os.RemoveAll(dir)
	say := func(format string, a ...any) { fmt.Fprintf(log, "==> "+format+"\n", a...) }
	rootfs := filepath.Join(dir, RootfsName)
	t0 := time.Now()
	if spec.Source.Kind == SourceExt4 {
		say("copying %s", spec.Source.Path)
		if _, err := place(spec.Source.Path, rootfs); err != nil {
			return store.Template{}, fmt.Errorf("copying the ext4 image: %w", err)
		}
	} else {
		src := spec.Source.source()
		say("building the root filesystem from %s (%d MiB)", src, spec.DiskMiB)
		res, err := image.Build(ctx, image.Config{DiskSize: int64(spec.DiskMiB) << 20, AgentPath: b.Agent, TempDir: dir}, src, rootfs)
		if err != nil {
			err = fmt.Errorf("building the root filesystem from %s: %w", src, err)
			switch {
			case errors.Is(err, image.ErrBadAgent):
				err = errdefs.Mark(err, errdefs.ErrUnavailable) // thawd's agent setting, not the request
			case errors.Is(err, image.ErrTooLarge), errors.Is(err, image.ErrBadLayer),
				errors.Is(err, image.ErrUnsafePath), errors.Is(err, image.ErrUnsupportedArch):
				err = errdefs.Mark(err, errdefs.ErrInvalidArgument)
			}
			return store.Template{}, err
		}
		say("root filesystem: %d entries, %d bytes of content", res.Entries, res.ContentBytes)
	}
	timings := []store.Phase{{Name: "image", Duration: time.Since(t0)}}
	say("image: %v", timings[0].Duration.Round(time.Millisecond))
	br := BootRequest{ID: id, Dir: dir, Rootfs: rootfs, VMState: filepath.Join(dir, VMStateName), Memory: filepath.Join(dir, MemoryName),
		Kernel: b.Kernel, VCPUs: spec.VCPUs, MemoryMiB: spec.MemoryMiB, Steps: spec.Steps, Start: spec.Start, Ready: spec.Ready}
	booted, err := b.Boot(ctx, br, log)
	if err != nil {
		return store.Template{}, fmt.Errorf("build VM %s: %w", id, err)
	}
	timings = append(timings, booted...)
	if b.Record == nil {
		say("snapshot taken; publishing without a recording run (prefetch is off)")
	} else {
		say("snapshot taken; publishing after a recording run")
	}
	t, err := Register(ctx, b.Store, b.Layout, RegisterRequest{Name: spec.Name, VMState: br.VMState, Memory: br.Memory, Rootfs: rootfs,
		Kernel: b.Kernel, RootDrive: RootDriveID, VCPUs: spec.VCPUs, MemoryMiB: spec.MemoryMiB, Ready: spec.Ready, Warmup: spec.Warmup,
		Record: b.Record, Timings: timings, Progress: log})
	if err != nil {
		return store.Template{}, err
	}
	say("template %s build %s published in %v", spec.Name, t.Current, time.Since(t0).Round(time.Millisecond))
	return t, nil
}
