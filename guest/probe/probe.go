// Package probe builds the probe guest: a freestanding x86-64 program
// (the C, assembly and linker script under src/, embedded in the binary)
// that thaw-vmm boots like a kernel on any /dev/kvm, PVM included, because
// it keeps interrupts off and talks only through port I/O and memory. See
// probe.c for what it prints.
//
// Build compiles it with gcc and caches the ELF under
// /var/cache/thaw/probe/<hash of the sources and flags>, so every test and
// script shares one build per source version.
package probe

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
)

//go:embed src/*.c src/*.h src/*.S src/probe.ld
var sources embed.FS

// CacheDir is where built probes are kept, outside any checkout.
const CacheDir = "/var/cache/thaw/probe"

// cflags are the compiler flags; they are part of the cache key.
var cflags = []string{
	"-ffreestanding", "-nostdlib", "-static", "-fno-pic", "-no-pie",
	"-mno-red-zone", "-mno-sse", "-mno-mmx", "-fno-builtin",
	"-O2", "-fno-stack-protector", "-fcf-protection=none",
	"-Wall", "-Werror",
	"-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments",
}

// Hash identifies the probe's sources and build flags.
func Hash() string {
	h := sha256.New()
	// fs.WalkDir visits files in lexical order, so the hash is stable.
	fs.WalkDir(sources, "src", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := sources.ReadFile(path)
		fmt.Fprintf(h, "%s %d\n", path, len(b))
		h.Write(b)
		return err
	})
	fmt.Fprintf(h, "%q", cflags)
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// Build returns the path of the probe ELF, building it with gcc into
// cacheDir/<hash>/probe.elf when it is not there yet. An empty cacheDir
// means CacheDir, or, when that cannot be created (not root), thaw/probe
// under the user's cache directory.
func Build(ctx context.Context, cacheDir string) (string, error) {
	if cacheDir == "" {
		cacheDir = CacheDir
		if err := os.MkdirAll(cacheDir, 0o755); errors.Is(err, fs.ErrPermission) {
			user, uerr := os.UserCacheDir()
			if uerr != nil {
				return "", fmt.Errorf("probe cache: %w, and no user cache directory: %w", err, uerr)
			}
			cacheDir = filepath.Join(user, "thaw", "probe")
		}
	}
	dir := filepath.Join(cacheDir, Hash())
	out := filepath.Join(dir, "probe.elf")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("creating probe cache: %w", err)
	}
	src, err := os.MkdirTemp(dir, "src-")
	if err != nil {
		return "", fmt.Errorf("creating probe build dir: %w", err)
	}
	defer os.RemoveAll(src)
	if err := fs.WalkDir(sources, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := sources.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(src, filepath.Base(path)), b, 0o644)
	}); err != nil {
		return "", fmt.Errorf("writing probe sources: %w", err)
	}
	tmp := filepath.Join(src, "probe.elf")
	args := append(append([]string{}, cflags...), "-T", filepath.Join(src, "probe.ld"), "-o", tmp)
	// start.S first: its .text.start holds the entry point.
	args = append(args, filepath.Join(src, "start.S"))
	for _, name := range []string{"probe.c", "virtio.c", "vsock.c"} {
		args = append(args, filepath.Join(src, name))
	}
	cmd := exec.CommandContext(ctx, "gcc", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.Error
		if errors.As(err, &ee) {
			return "", fmt.Errorf("building the probe guest needs gcc (scripts/setup installs it): %w", err)
		}
		return "", fmt.Errorf("building the probe guest: gcc: %w\n%s", err, stderr.Bytes())
	}
	// Rename is atomic: concurrent builders race harmlessly.
	if err := os.Rename(tmp, out); err != nil {
		return "", fmt.Errorf("installing probe: %w", err)
	}
	return out, nil
}
