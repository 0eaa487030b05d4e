package nested

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// kernelScript builds the guest kernel; see its header for the cache.
const kernelScript = "guest/kernel/build"

// RepoRoot finds the checkout containing the working directory (tests run
// in their package's directory) by its go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		mod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(mod, []byte("module github.com/thawvm/thaw\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the Thaw checkout (no go.mod for github.com/thawvm/thaw above the working directory)")
		}
		dir = parent
	}
}

// GuestKernelPath returns where the guest kernel for the config in root's
// guest/kernel is cached, and whether it is there yet.
func GuestKernelPath(ctx context.Context, root string) (path string, cached bool, err error) {
	out, err := exec.CommandContext(ctx, filepath.Join(root, kernelScript), "--path").Output()
	if err != nil {
		return "", false, fmt.Errorf("%s --path: %w", kernelScript, cmdErr(err))
	}
	path = strings.TrimSpace(string(out))
	_, err = os.Stat(path)
	return path, err == nil, nil
}

// BuildGuestKernel runs root's guest/kernel/build, which builds the guest
// vmlinux if its cache lacks it (several minutes, niced) and returns its
// path. The build's progress goes to progress.
func BuildGuestKernel(ctx context.Context, root string, progress io.Writer) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(root, kernelScript))
	cmd.Stderr = progress
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w", kernelScript, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// xenPhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY (xen/include/public/elfnote.h):
// the note whose value is the kernel's 32-bit PVH entry point.
const xenPhys32Entry = 18

// PVHEntry returns the PVH entry point that the ELF kernel at path declares
// in its "Xen" PHYS32_ENTRY note, or an error when it has none.
func PVHEntry(path string) (uint32, error) {
	f, err := elf.Open(path)
	if err != nil {
		return 0, fmt.Errorf("reading kernel %s: %w", path, err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return 0, fmt.Errorf("kernel %s is %v %v, want ELFCLASS64 EM_X86_64", path, f.Class, f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data, err := io.ReadAll(io.LimitReader(p.Open(), 1<<20))
		if err != nil {
			return 0, fmt.Errorf("reading notes of %s: %w", path, err)
		}
		if entry, ok := findPVHNote(data, f.ByteOrder); ok {
			return entry, nil
		}
	}
	return 0, fmt.Errorf("kernel %s has no Xen PHYS32_ENTRY note: build it with CONFIG_PVH=y", path)
}

// findPVHNote walks ELF notes (namesz, descsz, type, then name and desc,
// each padded to 4 bytes) for Xen's PHYS32_ENTRY.
func findPVHNote(data []byte, bo binary.ByteOrder) (uint32, bool) {
	pad := func(n uint32) uint64 { return (uint64(n) + 3) &^ 3 }
	for len(data) >= 12 {
		namesz, descsz, typ := bo.Uint32(data), bo.Uint32(data[4:]), bo.Uint32(data[8:])
		data = data[12:]
		nameEnd, descEnd := pad(namesz), pad(namesz)+pad(descsz)
		if descEnd > uint64(len(data)) {
			return 0, false
		}
		name, desc := data[:namesz], data[nameEnd:nameEnd+uint64(descsz)]
		if string(bytes.TrimRight(name, "\x00")) == "Xen" && typ == xenPhys32Entry && len(desc) >= 4 {
			return bo.Uint32(desc), true
		}
		data = data[descEnd:]
	}
	return 0, false
}
