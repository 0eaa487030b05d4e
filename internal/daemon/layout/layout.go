// Package layout names every path under thawd's data directory and creates,
// publishes and removes them so that a crash at any point leaves either the
// old state or the new one at each published path, never half of one:
//
//	<data>/thawd.db                        the state store
//	<data>/templates/<name>/<build>/       a published template build's artifacts
//	<data>/sandboxes/<id>/                 a sandbox's directory (disk clone, sockets, snapshots)
//	<data>/tmp/                            staging and trash; emptied at start
//
// Builds are assembled in a staging directory under tmp and published with
// one rename(2) (RENAME_NOREPLACE), which is atomic because tmp is on the same
// filesystem. Removal renames into tmp first, then deletes, so a crash mid
// delete leaves trash in tmp rather than a half-deleted build or sandbox.
package layout

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/errdefs"
)

// Layout is the data directory's path scheme. The zero value is not usable;
// call New.
type Layout struct {
	root string
}

// New returns the layout rooted at the absolute path root. It touches
// nothing; Init creates the directories.
func New(root string) (Layout, error) {
	if !filepath.IsAbs(root) {
		return Layout{}, errdefs.InvalidArgument("data directory %q is not an absolute path", root)
	}
	return Layout{root: filepath.Clean(root)}, nil
}

// Root returns the data directory.
func (l Layout) Root() string { return l.root }

// Store returns the state store's path.
func (l Layout) Store() string { return filepath.Join(l.root, "thawd.db") }

// TemplateDir returns the directory of template name's builds.
func (l Layout) TemplateDir(name string) string { return filepath.Join(l.root, "templates", name) }

// BuildDir returns the directory of a published build.
func (l Layout) BuildDir(name, build string) string { return filepath.Join(l.TemplateDir(name), build) }

// SandboxDir returns the directory of sandbox id.
func (l Layout) SandboxDir(id string) string { return filepath.Join(l.root, "sandboxes", id) }

func (l Layout) tmp() string { return filepath.Join(l.root, "tmp") }

// ScratchDir creates a fresh directory (mode 0700) in tmp whose name starts
// with prefix, for an ephemeral VM such as a build's recording run. The
// caller removes it; a crash leaves it for Init to clear.
func (l Layout) ScratchDir(prefix string) (string, error) {
	dir, err := os.MkdirTemp(l.tmp(), prefix)
	if err != nil {
		return "", errdefs.Mark(fmt.Errorf("creating a scratch directory: %w", err), kindOf(err))
	}
	return dir, nil
}

// Init creates the data directory and its subdirectories (mode 0700: they
// hold guest memory and disks) and empties tmp of what a crash left there.
// Call it only while holding the store's lock: a second thawd must not
// clear the first one's staging directories.
func (l Layout) Init() error {
	for _, d := range []string{l.root, filepath.Join(l.root, "templates"), filepath.Join(l.root, "sandboxes"), l.tmp()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("creating data directory: %w", err)
		}
	}
	ents, err := os.ReadDir(l.tmp())
	if err != nil {
		return fmt.Errorf("emptying %s: %w", l.tmp(), err)
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(l.tmp(), e.Name())); err != nil {
			return fmt.Errorf("emptying %s: %w", l.tmp(), err)
		}
	}
	return nil
}

// StageBuild creates an empty staging directory for build of template name,
// on the data directory's filesystem so that PublishBuild can rename it.
func (l Layout) StageBuild(name, build string) (string, error) {
	if err := validate(name, build); err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp(l.tmp(), "stage-"+name+"-"+build+"-")
	if err != nil {
		return "", errdefs.Mark(fmt.Errorf("staging build %s/%s: %w", name, build, err), kindOf(err))
	}
	return dir, nil
}

// PublishBuild moves the staging directory, its files synced, to the build's
// published path in one rename. A build already published under that path
// is an ErrAlreadyExists error and stays as it was.
func (l Layout) PublishBuild(staging, name, build string) error {
	if err := validate(name, build); err != nil {
		return err
	}
	if filepath.Dir(staging) != l.tmp() {
		return errdefs.InvalidArgument("staging directory %s is not in %s: use StageBuild", staging, l.tmp())
	}
	if err := syncTree(staging); err != nil {
		return fmt.Errorf("publishing build %s/%s: %w", name, build, err)
	}
	if err := os.MkdirAll(l.TemplateDir(name), 0o700); err != nil {
		return fmt.Errorf("publishing build %s/%s: %w", name, build, err)
	}
	dst := l.BuildDir(name, build)
	err := unix.Renameat2(unix.AT_FDCWD, staging, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EEXIST) {
		return errdefs.AlreadyExists("build %s/%s is already published at %s", name, build, dst)
	}
	if err != nil {
		return fmt.Errorf("publishing build %s/%s: renaming %s to %s: %w", name, build, staging, dst, err)
	}
	return syncDir(l.TemplateDir(name))
}

// RemoveBuild deletes a published build. A missing build is not an error.
func (l Layout) RemoveBuild(name, build string) error {
	if err := validate(name, build); err != nil {
		return err
	}
	if err := l.trash(l.BuildDir(name, build)); err != nil {
		return fmt.Errorf("removing build %s/%s: %w", name, build, err)
	}
	// The template directory goes with its last build.
	if err := os.Remove(l.TemplateDir(name)); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) {
		return fmt.Errorf("removing template directory %s: %w", name, err)
	}
	return nil
}

// CreateSandboxDir creates the directory of sandbox id (mode 0700). An
// existing one is an ErrAlreadyExists error.
func (l Layout) CreateSandboxDir(id string) (string, error) {
	if err := store.ValidateID("sandbox id", id); err != nil {
		return "", err
	}
	dir := l.SandboxDir(id)
	err := os.Mkdir(dir, 0o700)
	if errors.Is(err, os.ErrExist) {
		return "", errdefs.AlreadyExists("sandbox directory %s already exists", dir)
	}
	if err != nil {
		return "", errdefs.Mark(fmt.Errorf("creating sandbox directory: %w", err), kindOf(err))
	}
	return dir, nil
}

// RemoveSandboxDir deletes the directory of sandbox id and everything in
// it. A missing directory is not an error, so teardown can be retried.
func (l Layout) RemoveSandboxDir(id string) error {
	if err := store.ValidateID("sandbox id", id); err != nil {
		return err
	}
	if err := l.trash(l.SandboxDir(id)); err != nil {
		return fmt.Errorf("removing sandbox %s: %w", id, err)
	}
	return nil
}

// SandboxDirs returns the ids of the sandbox directories present, so the
// reconciler can find directories no record accounts for.
func (l Layout) SandboxDirs() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(l.root, "sandboxes"))
	if err != nil {
		return nil, fmt.Errorf("listing sandbox directories: %w", err)
	}
	var ids []string
	for _, e := range ents {
		if e.IsDir() {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

// trash renames path into tmp and deletes it there.
func (l Layout) trash(path string) error {
	t, err := os.MkdirTemp(l.tmp(), "trash-")
	if err != nil {
		return err
	}
	moved := filepath.Join(t, filepath.Base(path))
	if err := os.Rename(path, moved); err != nil && !errors.Is(err, os.ErrNotExist) {
		os.Remove(t)
		return err
	}
	return os.RemoveAll(t)
}

func validate(name, build string) error {
	if err := store.ValidateID("template name", name); err != nil {
		return err
	}
	return store.ValidateID("build id", build)
}

// kindOf gives an error creating a directory its kind: a full disk is
// resource exhausted.
func kindOf(err error) *errdefs.Kind {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return errdefs.ErrResourceExhausted
	}
	return nil
}

// syncTree fsyncs every regular file and directory under root, so that a
// published build's content is on disk before its name is.
func syncTree(root string) error {
	return filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && !d.Type().IsRegular() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := f.Sync(); err != nil {
			return fmt.Errorf("syncing %s: %w", path, err)
		}
		return nil
	})
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}
