// Package image builds ext4 root filesystems for sandbox templates from a
// directory, a tarball, an OCI image layout or a `docker save` archive,
// without loop mounts: the tree is staged in a directory (layers applied in
// order, whiteouts honoured, escaping paths refused) and written with
// `mkfs.ext4 -d`. The thaw-agent binary is injected as /sbin/thaw-agent with
// /sbin/init pointing at it, so the kernel's default init starts it and no
// init= is needed on the kernel command line (init=/sbin/thaw-agent works
// too).
//
// Ownership and modes are preserved. Run as root, the staging tree carries
// them and mkfs copies them. Run as another user, files are staged as that
// user (with the owner's read and write bits added where the image lacks
// them, so later layers and mkfs can get at them) and the recorded owners,
// modes and device nodes are written into the finished image with debugfs,
// so the result is the same; only extended attributes (file capabilities)
// are lost.
package image

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
)

// Errors callers can test for with errors.Is.
var (
	// ErrTooLarge: the content does not fit the disk, or exceeds
	// Config.MaxContentBytes.
	ErrTooLarge = errors.New("image too large")
	// ErrUnsupportedArch: the image is not for linux/amd64.
	ErrUnsupportedArch = errors.New("unsupported architecture")
	// ErrBadAgent: the agent binary is missing or unusable.
	ErrBadAgent = errors.New("unusable agent binary")
	// ErrBadLayer: a layer or tarball cannot be read or is corrupt.
	ErrBadLayer = errors.New("unreadable layer")
	// ErrUnsafePath: an entry tries to write outside the root.
	ErrUnsafePath = errors.New("unsafe path in image")
)

// Config configures Build.
type Config struct {
	// DiskSize is the size of the ext4 image in bytes: a multiple of 1 MiB,
	// at least MinDiskSize.
	DiskSize int64
	// MaxContentBytes caps the bytes of file content extracted from the
	// source (all layers, before whiteouts). Default: DiskSize.
	MaxContentBytes int64
	// AgentPath is the static thaw-agent binary to inject.
	AgentPath string
	// Label is the file system label; default "thaw-root".
	Label string
	// TempDir is where the staging tree is made; default os.TempDir(). It
	// needs room for the whole content.
	TempDir string
	// Logger receives progress; nil discards it.
	Logger *slog.Logger
}

// MinDiskSize is the smallest disk Build makes.
const MinDiskSize = 8 << 20

// AgentImagePath and InitPath are where the agent lands in the image.
const (
	AgentImagePath = "/sbin/thaw-agent"
	InitPath       = "/sbin/init"
)

// Validate reports what is wrong with c, if anything.
func (c *Config) Validate() error {
	switch {
	case c.DiskSize < MinDiskSize:
		return fmt.Errorf("disk size %d bytes is below the minimum of %d MiB", c.DiskSize, MinDiskSize>>20)
	case c.DiskSize%(1<<20) != 0:
		return fmt.Errorf("disk size %d bytes is not a whole number of MiB", c.DiskSize)
	case c.MaxContentBytes < 0:
		return fmt.Errorf("max content bytes %d is negative", c.MaxContentBytes)
	case c.AgentPath == "":
		return fmt.Errorf("%w: no agent path given (build it with CGO_ENABLED=0 go build ./cmd/thaw-agent)", ErrBadAgent)
	}
	return nil
}

// Result describes a built image.
type Result struct {
	// Path is the ext4 image.
	Path string `json:"path"`
	// DiskSize is its size in bytes.
	DiskSize int64 `json:"disk_size"`
	// ContentBytes is the file content extracted from the source (the
	// agent not included).
	ContentBytes int64 `json:"content_bytes"`
	// Entries counts the files, directories and links the source wrote.
	Entries int `json:"entries"`
	// Config is the OCI image's run configuration (zero for directories and
	// tarballs): what thawd passes to the agent's init and exec.
	Config RunConfig `json:"config"`
}

// RunConfig is the part of an OCI image configuration a sandbox uses.
type RunConfig struct {
	Env        []string `json:"env,omitempty"`
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
}

// Source is something a root filesystem is built from.
type Source interface {
	// apply writes the source's tree into st.
	apply(ctx context.Context, st *stager) (RunConfig, error)
	String() string
}

// Build writes an ext4 image of src, with the agent injected, to out
// (replaced if it exists; removed if Build fails).
func Build(ctx context.Context, cfg Config, src Source, out string) (Result, error) {
	return build(ctx, cfg, src, out, os.Geteuid() != 0)
}

// build is Build with the choice of deferring owners and device nodes to
// debugfs made explicit, so that tests running as root cover both paths.
func build(ctx context.Context, cfg Config, src Source, out string, deferOwners bool) (Result, error) {
	if err := cfg.Validate(); err != nil {
		return Result{}, fmt.Errorf("image config: %w", err)
	}
	if cfg.MaxContentBytes == 0 {
		cfg.MaxContentBytes = cfg.DiskSize
	}
	if cfg.Label == "" {
		cfg.Label = "thaw-root"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return Result{}, fmt.Errorf("finding mkfs.ext4: %w (install e2fsprogs; scripts/setup does)", err)
	}
	agent, err := checkAgent(cfg.AgentPath)
	if err != nil {
		return Result{}, err
	}
	defer agent.Close()

	stageDir, err := os.MkdirTemp(cfg.TempDir, "thaw-image-*")
	if err != nil {
		return Result{}, fmt.Errorf("creating staging directory: %w", err)
	}
	defer os.RemoveAll(stageDir)
	st, err := newStager(stageDir, cfg.MaxContentBytes, deferOwners)
	if err != nil {
		return Result{}, err
	}
	defer st.close()

	cfg.Logger.Info("staging image", "source", src.String())
	rc, err := src.apply(ctx, st)
	if err != nil {
		return Result{}, fmt.Errorf("building from %s: %w", src, err)
	}
	content, entries := st.content, st.entries // the source's, without the agent
	if err := st.injectAgent(agent); err != nil {
		return Result{}, err
	}
	if need := st.estimatedSize(cfg.DiskSize); need > cfg.DiskSize {
		return Result{}, fmt.Errorf("%w: %s needs about %d MiB, the disk is %d MiB: raise the disk size",
			ErrTooLarge, src, need>>20, cfg.DiskSize>>20)
	}
	cfg.Logger.Info("writing ext4", "out", out, "size_mib", cfg.DiskSize>>20, "entries", st.entries)
	if err := writeExt4(ctx, mkfs, cfg, st, out); err != nil {
		os.Remove(out)
		return Result{}, fmt.Errorf("building from %s: %w", src, err)
	}
	return Result{Path: out, DiskSize: cfg.DiskSize, ContentBytes: content, Entries: entries, Config: rc}, nil
}
