// Package template makes template builds available to sandboxes. Register
// publishes a build from an existing snapshot (VM state, memory file, disk,
// optionally the kernel it was booted from): the way to bring a template
// made elsewhere, and the way tests on hosts where a Linux guest cannot
// boot directly make probe-guest templates. Builder builds a template from
// an image: root filesystem (internal/image), a build VM booted by a Booter
// (steps, start command, ready check, Full snapshot), then Register.
package template

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/thawvm/thaw/internal/daemon/layout"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/fcapi"
)

// Artifact names inside a build directory.
const (
	VMStateName = "vmstate"
	MemoryName  = "memory"
	RootfsName  = "rootfs.ext4"
	KernelName  = "vmlinux"
	// AccessLogName is the recording run's page order.
	AccessLogName = "access.log"
)

// Recorder runs a build's recording run on the staged snapshot files and
// writes the access log, returning the pages recorded and the run's phases
// (internal/daemon/sandbox's Manager.Record).
type Recorder func(ctx context.Context, r RecordSpec) (Recording, error)

// RecordSpec is what a recording run restores and does.
type RecordSpec struct {
	// VMState and Memory are the staged snapshot files (absolute).
	VMState, Memory string
	// Rootfs is the staged disk, which the run must give the VM instead
	// of the snapshot's (a clone named like a sandbox's); RootDrive is the
	// build's RootDrive.
	Rootfs, RootDrive string
	// Log is where the access log goes (absolute).
	Log   string
	Ready store.ReadyCheck
	// Warmup are run through the agent after the ready check, in order,
	// before the wait for the settle detector; one that fails fails the
	// run with its exit status and output.
	Warmup [][]string
	// Progress, if set, gets a line per phase as it ends ("==> name:
	// duration", as Register writes its own) and the warm-up commands'
	// output, so a build's log follows the run as it goes.
	Progress io.Writer
}

// errWarmupNoRecording refuses warm-up commands without a recording run:
// they would shape an access log that nobody writes.
var errWarmupNoRecording = errdefs.FailedPrecondition("warm-up commands fill a build's access log, and this thawd records none (uffd_prefetch is off): turn prefetch on or drop the warm-up")

// Recording is what a recording run reports.
type Recording struct {
	// Pages is the number of pages in the access log.
	Pages int
	// Phases are the run's timed phases, in order (each named
	// "record-..."); without them the build records the run as one
	// "record" phase.
	Phases []store.Phase
}

// RegisterRequest names an existing snapshot's files (absolute host paths)
// and the machine it was taken of.
type RegisterRequest struct {
	Name    string
	VMState string
	Memory  string
	Rootfs  string
	// Kernel is optional (a snapshot does not need it to restore).
	Kernel string
	// RootDrive is optional: the snapshot's root drive_id, which sandboxes
	// point at their own disk (store.Build.RootDrive).
	RootDrive string
	VCPUs     int
	MemoryMiB int
	Ready     store.ReadyCheck
	// Warmup are the recording run's warm-up commands (BuildSpec.Warmup);
	// they need Record.
	Warmup [][]string
	// Record, if set, runs the recording run before the build is
	// published; a failed recording fails the registration. Nil skips it
	// (THAW_UFFD_PREFETCH off): sandboxes then prefetch in file order.
	Record Recorder
	// Timings are phases that came before the registration (a build's
	// image, boot, steps and snapshot); the build's timings start with
	// them.
	Timings []store.Phase
	// Progress, if set, gets a line per phase as it ends ("==> copy:
	// 1.2s"), for a build's log.
	Progress io.Writer
}

// Validate reports what is wrong with r, naming the fields.
func (r RegisterRequest) Validate() error {
	if err := store.ValidateID("template name", r.Name); err != nil {
		return err
	}
	var errs []error
	for _, f := range []struct {
		field, path string
		optional    bool
	}{{"vmstate", r.VMState, false}, {"memory", r.Memory, false}, {"rootfs", r.Rootfs, false}, {"kernel", r.Kernel, true}} {
		if f.path == "" && f.optional {
			continue
		}
		if !filepath.IsAbs(f.path) {
			errs = append(errs, errdefs.InvalidArgument("%s %q: want an absolute path on the host", f.field, f.path))
			continue
		}
		fi, err := os.Stat(f.path)
		if err != nil {
			errs = append(errs, errdefs.InvalidArgument("%s: %v", f.field, err))
		} else if !fi.Mode().IsRegular() {
			errs = append(errs, errdefs.InvalidArgument("%s %s is not a regular file", f.field, f.path))
		}
	}
	if r.RootDrive != "" {
		if err := fcapi.CheckID(r.RootDrive); err != nil {
			errs = append(errs, errdefs.InvalidArgument("root_drive: %v", err))
		}
	}
	if r.VCPUs < 1 || r.VCPUs > 32 {
		errs = append(errs, errdefs.InvalidArgument("vcpus %d: want 1 to 32", r.VCPUs))
	}
	if r.MemoryMiB < 1 {
		errs = append(errs, errdefs.InvalidArgument("memory_mib %d: want at least 1", r.MemoryMiB))
	} else if fi, err := os.Stat(r.Memory); err == nil && fi.Size() != int64(r.MemoryMiB)<<20 {
		errs = append(errs, errdefs.InvalidArgument("memory file %s is %d bytes, but memory_mib %d needs %d: a truncated or foreign memory file?",
			r.Memory, fi.Size(), r.MemoryMiB, int64(r.MemoryMiB)<<20))
	}
	if err := r.Ready.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := checkWarmup(r.Warmup, r.Ready); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Register copies the snapshot's files into a new build of template
// r.Name (creating the template if needed), publishes it atomically and
// makes it the template's current build. Files are reflinked when the
// source is on the data directory's filesystem, copied otherwise.
func Register(ctx context.Context, st *store.Store, lay layout.Layout, r RegisterRequest) (store.Template, error) {
	if err := r.Validate(); err != nil {
		return store.Template{}, err
	}
	if len(r.Warmup) > 0 && r.Record == nil {
		return store.Template{}, errWarmupNoRecording
	}
	var rnd [3]byte
	rand.Read(rnd[:])
	buildID := "b" + time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(rnd[:])
	started := time.Now()
	staging, err := lay.StageBuild(r.Name, buildID)
	if err != nil {
		return store.Template{}, err
	}
	published := false
	defer func() {
		if !published {
			os.RemoveAll(staging)
		}
	}()
	b := store.Build{ID: buildID, State: store.BuildReady, Dir: lay.BuildDir(r.Name, buildID),
		Artifacts: store.Artifacts{VMState: VMStateName, Memory: MemoryName, Rootfs: RootfsName},
		RootDrive: r.RootDrive, VCPUs: r.VCPUs, MemoryMiB: r.MemoryMiB, Ready: r.Ready, Warmup: r.Warmup, CreatedAt: started}
	files := []struct{ src, name string }{{r.VMState, VMStateName}, {r.Memory, MemoryName}, {r.Rootfs, RootfsName}}
	if r.Kernel != "" {
		files = append(files, struct{ src, name string }{r.Kernel, KernelName})
		b.Artifacts.Kernel = KernelName
	}
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return store.Template{}, err
		}
		n, err := place(f.src, filepath.Join(staging, f.name))
		if err != nil {
			return store.Template{}, fmt.Errorf("registering template %q: %w", r.Name, err)
		}
		switch f.name {
		case MemoryName:
			b.MemoryBytes = n
		case RootfsName:
			b.RootfsBytes = n
			b.DiskMiB = int(max((n+(1<<20)-1)>>20, 1))
		}
	}
	progress := func(ps ...store.Phase) {
		for _, p := range ps {
			if r.Progress != nil {
				fmt.Fprintf(r.Progress, "==> %s: %v\n", p.Name, p.Duration.Round(time.Millisecond))
			}
		}
	}
	copied := time.Now()
	b.Timings = append(append([]store.Phase(nil), r.Timings...), store.Phase{Name: "copy", Duration: copied.Sub(started)})
	progress(b.Timings[len(b.Timings)-1])
	if r.Record != nil {
		if r.Progress != nil {
			fmt.Fprintln(r.Progress, "==> recording run: the snapshot restored under a recording page server until its faults settle")
		}
		rec, err := r.Record(ctx, RecordSpec{VMState: filepath.Join(staging, VMStateName), Memory: filepath.Join(staging, MemoryName),
			Rootfs: filepath.Join(staging, RootfsName), RootDrive: r.RootDrive, Log: filepath.Join(staging, AccessLogName),
			Ready: r.Ready, Warmup: r.Warmup, Progress: r.Progress})
		if err != nil {
			return store.Template{}, fmt.Errorf("registering template %q: %w", r.Name, err)
		}
		b.Artifacts.AccessLog, b.AccessLogPages = AccessLogName, int64(rec.Pages)
		if len(rec.Phases) == 0 {
			rec.Phases = []store.Phase{{Name: "record", Duration: time.Since(copied)}}
			progress(rec.Phases...) // a recorder with phases reported them itself
		}
		b.Timings = append(b.Timings, rec.Phases...)
		if r.Progress != nil {
			fmt.Fprintf(r.Progress, "==> access log: %d pages in recorded order (%.1f MiB of %d MiB)\n",
				rec.Pages, float64(rec.Pages)*4096/(1<<20), b.MemoryBytes>>20)
		}
	}
	b.FinishedAt = time.Now()
	if err := lay.PublishBuild(staging, r.Name, buildID); err != nil {
		return store.Template{}, err
	}
	published = true
	add := func(t *store.Template) error {
		t.Builds = append(t.Builds, b)
		t.Current = b.ID
		return nil
	}
	t, err := st.UpdateTemplate(r.Name, add)
	if errdefs.IsNotFound(err) {
		t = store.Template{Name: r.Name, CreatedAt: started}
		add(&t)
		err = st.CreateTemplate(t)
	}
	if err != nil {
		return store.Template{}, errors.Join(err, lay.RemoveBuild(r.Name, buildID))
	}
	return t, nil
}
