package nested

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// moduleName normalises a kernel module name the way the kernel does:
// "kvm-amd" and "kvm_amd" name the same module.
func moduleName(s string) string {
	return strings.ReplaceAll(strings.TrimSuffix(filepath.Base(s), ".ko"), "-", "_")
}

// parseModinfo returns the module names in the "depends=" entry of a
// module's .modinfo section, which holds NUL-separated key=value strings.
func parseModinfo(section []byte) []string {
	for _, kv := range bytes.Split(section, []byte{0}) {
		v, ok := bytes.CutPrefix(kv, []byte("depends="))
		if !ok {
			continue
		}
		var deps []string
		for _, d := range strings.Split(string(v), ",") {
			if d = strings.TrimSpace(d); d != "" {
				deps = append(deps, moduleName(d))
			}
		}
		return deps
	}
	return nil
}

// moduleDepends reads the dependencies of the module file at path.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening module: %w", err)
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, fmt.Errorf("module %s has no .modinfo section", path)
	}
	data, err := s.Data()
	if err != nil {
		return nil, fmt.Errorf("reading .modinfo of %s: %w", path, err)
	}
	return parseModinfo(data), nil
}

// resolveModules finds the modules named in want under dir (a kernel's
// /lib/modules/<version>) and returns the paths of them and everything
// they depend on, dependencies first: the order insmod must load them in.
// Modules the kernel has built in (modules.builtin) need no loading and are
// left out. Uncompressed modules only (Debian's 6.1 kernels ship them so).
func resolveModules(dir string, want []string) ([]string, error) {
	state := map[string]int{} // 1: visiting, 2: done
	if builtin, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, line := range strings.Fields(string(builtin)) {
			state[moduleName(line)] = 2
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading built-in modules: %w", err)
	}
	index := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(path, ".ko") {
			index[moduleName(path)] = path
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("indexing modules in %s: %w", dir, err)
	}
	var order []string
	var visit func(name, from string) error
	visit = func(name, from string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("module dependency cycle through %s", name)
		case 2:
			return nil
		}
		path, ok := index[name]
		if !ok {
			return fmt.Errorf("module %s (needed by %s) not found in %s", name, from, dir)
		}
		state[name] = 1
		deps, err := moduleDepends(path)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, path)
		return nil
	}
	for _, w := range want {
		if err := visit(moduleName(w), "the harness"); err != nil {
			return nil, err
		}
	}
	return order, nil
}
