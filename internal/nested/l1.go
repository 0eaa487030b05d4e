package nested

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// l1Package is Debian's metapackage for the stock cloud kernel; it depends
// on the versioned image package that holds the kernel and its modules.
const l1Package = "linux-image-cloud-amd64"

// l1Modules are loaded by the L1 init: KVM with AMD SVM (TCG emulates SVM,
// not VMX), the virtio-pci disks, tun for guests with a tap device, and
// loop and xfs for payloads that need a reflink filesystem (thawd's data
// directory: the demo mounts an XFS image made in L1's /tmp).
// Their dependencies are found from each module's .modinfo.
var l1Modules = []string{"kvm_amd", "virtio_pci", "virtio_blk", "tun", "loop", "xfs"}

// busybox is busybox-static's binary: the L1 userland.
const busybox = "/bin/busybox"

//go:embed init.sh
var initScript []byte

// l1Kernel is an unpacked L1 kernel image package in the cache.
type l1Kernel struct {
	dir     string // the unpacked package: boot/, lib/modules/
	vmlinuz string
	modules string // lib/modules/<version>
}

// aptField returns the named field of `apt-cache show` for pkg's candidate
// version.
func aptField(ctx context.Context, pkg, field string) (string, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "show", "--no-all-versions", pkg).Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache show %s: %w", pkg, cmdErr(err))
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+": "); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("apt-cache show %s: no %s field", pkg, field)
}

var imageDep = regexp.MustCompile(`\b(linux-image-[0-9][^ ,]*-cloud-amd64) \(= ([^)]+)\)`)

// fetchL1Kernel downloads Debian's cloud kernel image package (never
// installing it into the host's /boot) and unpacks it into the cache, keyed
// by the .deb's SHA256 from the archive index. A cached copy is used as is.
func (h *Harness) fetchL1Kernel(ctx context.Context) (*l1Kernel, error) {
	pkg, version, sum, err := h.resolveL1Package(ctx)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(h.cfg.CacheDir, "l1-kernel", pkg+"_"+sum[:16])
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err != nil {
		h.log.Info("downloading the L1 kernel", "package", pkg, "version", version, "cache", dir)
		if err := downloadDeb(ctx, pkg, version, sum, dir); err != nil {
			return nil, err
		}
	}
	k := &l1Kernel{dir: dir}
	if k.vmlinuz, err = onlyMatch(filepath.Join(dir, "boot", "vmlinuz-*")); err != nil {
		return nil, err
	}
	if k.modules, err = onlyMatch(filepath.Join(dir, "lib", "modules", "*")); err != nil {
		return nil, err
	}
	return k, nil
}

// aptLists holds the archive indexes; its mtime changes whenever apt-get
// update brings new ones.
const aptLists = "/var/lib/apt/lists"

// resolveL1Package finds the versioned image package behind l1Package and
// its .deb's SHA256. Each apt-cache call parses the whole index (a second
// of CPU, several on a loaded machine), so the answer is remembered in the
// cache until the indexes change.
func (h *Harness) resolveL1Package(ctx context.Context) (pkg, version, sum string, err error) {
	memo := filepath.Join(h.cfg.CacheDir, "l1-kernel", "resolved")
	st, err := os.Stat(aptLists)
	if err != nil {
		return "", "", "", fmt.Errorf("reading the APT indexes: %w", err)
	}
	stamp := strconv.FormatInt(st.ModTime().UnixNano(), 10)
	if b, err := os.ReadFile(memo); err == nil {
		if f := strings.Fields(string(b)); len(f) == 4 && f[0] == stamp && len(f[3]) == 64 {
			return f[1], f[2], f[3], nil
		}
	}
	deps, err := aptField(ctx, l1Package, "Depends")
	if err != nil {
		return "", "", "", err
	}
	m := imageDep.FindStringSubmatch(deps)
	if m == nil {
		return "", "", "", fmt.Errorf("%s depends on %q: no linux-image-*-cloud-amd64 package in it", l1Package, deps)
	}
	pkg, version = m[1], m[2]
	if sum, err = aptField(ctx, pkg, "SHA256"); err != nil {
		return "", "", "", err
	}
	if len(sum) != 64 {
		return "", "", "", fmt.Errorf("apt-cache gives %s the SHA256 %q: want 64 hex digits", pkg, sum)
	}
	if err := os.MkdirAll(filepath.Dir(memo), 0o755); err != nil {
		return "", "", "", err
	}
	if err := os.WriteFile(memo, []byte(strings.Join([]string{stamp, pkg, version, sum}, " ")+"\n"), 0o644); err != nil {
		return "", "", "", fmt.Errorf("remembering the L1 package: %w", err)
	}
	return pkg, version, sum, nil
}

// downloadDeb fetches pkg=version with apt-get download, checks its SHA256
// and unpacks it with dpkg-deb -x into dir, atomically.
func downloadDeb(ctx context.Context, pkg, version, sum, dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("creating cache directory: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".download-")
	if err != nil {
		return fmt.Errorf("creating download directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	// APT's sandbox user cannot write to our directory; we are root anyway.
	get := exec.CommandContext(ctx, "apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", pkg+"="+version)
	get.Dir = tmp
	if out, err := get.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get download %s=%s: %w\n%s", pkg, version, err, out)
	}
	debs, err := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if err != nil || len(debs) != 1 {
		return fmt.Errorf("apt-get download %s left %d .deb files, want 1", pkg, len(debs))
	}
	got, err := fileSHA256(debs[0])
	if err != nil {
		return err
	}
	if got != sum {
		return fmt.Errorf("downloaded %s has SHA256 %s, want %s from the archive index: run apt-get update", debs[0], got, sum)
	}
	unpacked := filepath.Join(tmp, "root")
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], unpacked).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg-deb -x %s: %w\n%s", debs[0], err, out)
	}
	if err := os.WriteFile(filepath.Join(unpacked, ".complete"), nil, 0o644); err != nil {
		return err
	}
	os.RemoveAll(dir) // an incomplete earlier attempt
	if err := os.Rename(unpacked, dir); err != nil {
		return fmt.Errorf("moving the unpacked kernel into the cache: %w", err)
	}
	return nil
}

// initramfs returns the L1 initramfs (busybox, the modules, init.sh),
// building it if the cache has none for this content.
func (h *Harness) initramfs(ctx context.Context, k *l1Kernel) (string, error) {
	mods, err := resolveModules(k.modules, l1Modules)
	if err != nil {
		return "", err
	}
	files := map[string]string{"bin/busybox": busybox} // archive path → host path
	var order []string
	for _, m := range mods {
		name := moduleName(m)
		order = append(order, name)
		files["lib/modules/"+name+".ko"] = m
	}
	list := []byte(strings.Join(order, "\n") + "\n")

	// The key covers every byte that goes into the archive.
	hash := sha256.New()
	fmt.Fprintf(hash, "init\x00%s\x00modules\x00%s\x00", initScript, list)
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		sum, err := fileSHA256(files[p])
		if err != nil {
			return "", err
		}
		fmt.Fprintf(hash, "%s\x00%s\x00", p, sum)
	}
	out := filepath.Join(h.cfg.CacheDir, "initramfs", hex.EncodeToString(hash.Sum(nil))[:16]+".cpio.gz")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	h.log.Info("building the L1 initramfs", "path", out, "modules", strings.Join(order, " "))

	stage, err := os.MkdirTemp("", "thaw-initramfs-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(stage)
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "lib/modules", "etc", "dev", "proc", "sys", "tmp"} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			return "", err
		}
	}
	for _, p := range paths {
		if err := copyFile(files[p], filepath.Join(stage, p)); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(filepath.Join(stage, "init"), initScript, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(stage, "etc/thaw-modules"), list, 0o644); err != nil {
		return "", err
	}
	if err := packCPIO(ctx, stage, out); err != nil {
		return "", err
	}
	return out, nil
}

// packCPIO writes the tree at dir as a gzipped newc cpio archive to out,
// atomically.
func packCPIO(ctx context.Context, dir, out string) error {
	var names []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path != dir {
			rel, _ := filepath.Rel(dir, path)
			names = append(names, rel)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("listing %s: %w", dir, err)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(out), ".initramfs-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	zw := gzip.NewWriter(f)
	cmd := exec.CommandContext(ctx, "cpio", "--quiet", "-o", "-H", "newc", "--owner=0:0", "--reproducible")
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader(strings.Join(names, "\n") + "\n")
	cmd.Stdout = zw
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("cpio: %w: %s", err, stderr.Bytes())
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("compressing the initramfs: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), out); err != nil {
		return fmt.Errorf("moving the initramfs into the cache: %w", err)
	}
	return nil
}

func onlyMatch(pattern string) (string, error) {
	m, err := filepath.Glob(pattern)
	if err != nil || len(m) != 1 {
		return "", fmt.Errorf("want exactly one %s, found %d: remove the cache directory to unpack again", pattern, len(m))
	}
	return m[0], nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hashing %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func copyFile(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, st.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return fmt.Errorf("copying %s: %w", from, err)
	}
	return dst.Close()
}

// cmdErr adds a command's stderr to its error.
func cmdErr(err error) error {
	if ee, ok := err.(*exec.ExitError); ok && len(ee.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, bytes.TrimSpace(ee.Stderr))
	}
	return err
}
