package disk

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/thawvm/thaw/internal/daemon/disk/disktest"
	"github.com/thawvm/thaw/internal/errdefs"
)

const imageMiB = 64

// writeImage writes a file of random content, synced, and returns its hash.
func writeImage(t *testing.T, path string, mib int) [32]byte {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for range mib {
		rand.Read(buf)
		h.Write(buf)
		if _, err := f.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func hashFile(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// usedBytes returns the bytes in use on dir's filesystem, after flushing it
// so delayed allocation and btrfs's lazy accounting have settled.
func usedBytes(t testing.TB, dir string) int64 {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}

// TestCloneSharesBlocks proves, on real reflink filesystems, that a clone
// costs (almost) no space, has the same content, and that writes on either
// side stay on that side.
func TestCloneSharesBlocks(t *testing.T) {
	for _, fstype := range []string{"xfs", "btrfs"} {
		t.Run(fstype, func(t *testing.T) {
			mnt := disktest.Mount(t, fstype, 512)
			src, dst := filepath.Join(mnt, "rootfs.ext4"), filepath.Join(mnt, "sandbox.ext4")
			want := writeImage(t, src, imageMiB)
			before := usedBytes(t, mnt)
			if err := Clone(src, dst); err != nil {
				t.Fatalf("Clone: %v", err)
			}
			grew := usedBytes(t, mnt) - before
			if grew > imageMiB<<20/8 {
				t.Errorf("cloning a %d MiB image used %d KiB: want a small fraction (blocks shared, not copied)", imageMiB, grew>>10)
			}
			// Control: a real copy on the same filesystem must show up in
			// the measurement, or the check above proves nothing.
			before = usedBytes(t, mnt)
			if err := os.WriteFile(filepath.Join(mnt, "copy.ext4"), mustRead(t, src), 0o600); err != nil {
				t.Fatal(err)
			}
			copied := usedBytes(t, mnt) - before
			if copied < imageMiB<<20*3/4 {
				t.Fatalf("a full copy of %d MiB measured as %d KiB: the space measurement is broken", imageMiB, copied>>10)
			}
			t.Logf("%s: cloning %d MiB used %d KiB; copying it used %d KiB", fstype, imageMiB, grew>>10, copied>>10)
			if got := hashFile(t, dst); got != want {
				t.Fatal("clone content differs from the template disk")
			}
			fi, err := os.Stat(dst)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 || fi.Size() != imageMiB<<20 {
				t.Errorf("clone mode %v size %d, want 0600 and %d", fi.Mode().Perm(), fi.Size(), imageMiB<<20)
			}

			// A write to the sandbox disk must not reach the template's.
			patch := bytes.Repeat([]byte{0xAB}, 4096)
			f, err := os.OpenFile(dst, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(patch, 1<<20); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if got := hashFile(t, src); got != want {
				t.Error("writing the clone changed the template disk")
			}
			b, err := os.ReadFile(dst)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b[1<<20:1<<20+4096], patch) {
				t.Error("the clone does not hold what was written to it")
			}
		})
	}
}

// TestNoReflinkIsAClearError: on filesystems without reflinks Clone fails
// with a failed-precondition error that names the filesystem and the
// remedy, leaves no file behind and copies nothing.
func TestNoReflinkIsAClearError(t *testing.T) {
	for _, tc := range []struct{ fstype, name string }{{"ext4", "ext4"}, {"tmpfs", "tmpfs"}} {
		t.Run(tc.fstype, func(t *testing.T) {
			mnt := disktest.Mount(t, tc.fstype, 128)
			src, dst := filepath.Join(mnt, "rootfs.ext4"), filepath.Join(mnt, "sandbox.ext4")
			writeImage(t, src, 8)
			before := usedBytes(t, mnt)
			err := Clone(src, dst)
			if !errdefs.IsFailedPrecondition(err) {
				t.Fatalf("Clone on %s: got %v, want a failed-precondition error", tc.fstype, err)
			}
			t.Logf("%s: %v", tc.fstype, err)
			for _, want := range []string{"the " + tc.name + " filesystem", "cannot make reflinks", "never copies"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
			if _, serr := os.Stat(dst); !errors.Is(serr, os.ErrNotExist) {
				t.Errorf("after a failed clone, %s: %v; want it gone", dst, serr)
			}
			if grew := usedBytes(t, mnt) - before; grew > 1<<20 {
				t.Errorf("a failed clone used %d KiB: it must not fall back to copying", grew>>10)
			}
			if err := Probe(mnt); !errdefs.IsFailedPrecondition(err) {
				t.Errorf("Probe(%s) = %v, want a failed-precondition error", tc.fstype, err)
			}
			assertOnly(t, mnt, "rootfs.ext4", "lost+found")
		})
	}
}

// assertOnly fails unless dir holds exactly the given names (those present).
func assertOnly(t *testing.T, dir string, allowed ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		ok := false
		for _, a := range allowed {
			ok = ok || e.Name() == a
		}
		if !ok {
			t.Errorf("%s holds leftover %s", dir, e.Name())
		}
	}
}

func TestProbe(t *testing.T) {
	mnt := disktest.Mount(t, "xfs", 300)
	if err := Probe(mnt); err != nil {
		t.Errorf("Probe(xfs) = %v, want nil", err)
	}
	assertOnly(t, mnt)
}

func TestCloneAcrossFilesystems(t *testing.T) {
	a, b := disktest.Mount(t, "xfs", 300), disktest.Mount(t, "xfs", 300)
	src := filepath.Join(a, "rootfs.ext4")
	writeImage(t, src, 1)
	err := Clone(src, filepath.Join(b, "sandbox.ext4"))
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "different filesystems") {
		t.Errorf("got %v, want a failed-precondition error about different filesystems", err)
	}
	assertOnly(t, b)
}

// TestCloneRefusals needs no special filesystem: the refusals happen before
// any clone is attempted.
func TestCloneRefusals(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "rootfs.ext4")
	if err := os.WriteFile(src, []byte("disk"), 0o600); err != nil {
		t.Fatal(err)
	}
	existing := filepath.Join(dir, "existing.ext4")
	if err := os.WriteFile(existing, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Clone(src, existing); !errdefs.IsAlreadyExists(err) {
		t.Errorf("onto an existing file: got %v, want already exists", err)
	}
	if b, _ := os.ReadFile(existing); string(b) != "keep me" {
		t.Errorf("existing file now holds %q, want it untouched", b)
	}
	if err := Clone(filepath.Join(dir, "missing"), filepath.Join(dir, "x")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing source: got %v, want not-exist", err)
	}
	if err := Clone(dir, filepath.Join(dir, "y")); !errdefs.IsInvalidArgument(err) {
		t.Errorf("directory source: got %v, want invalid argument", err)
	}
	assertOnly(t, dir, "rootfs.ext4", "existing.ext4")
}

func TestClassify(t *testing.T) {
	tests := []struct {
		err  error
		is   func(error) bool
		want string
	}{
		{unix.EOPNOTSUPP, errdefs.IsFailedPrecondition, "cannot make reflinks"},
		{unix.ENOTTY, errdefs.IsFailedPrecondition, "cannot make reflinks"},
		{unix.EXDEV, errdefs.IsFailedPrecondition, "different filesystems"},
		{unix.ENOSPC, errdefs.IsResourceExhausted, "no space left"},
		{unix.EDQUOT, errdefs.IsResourceExhausted, "quota"},
	}
	for _, tt := range tests {
		err := classify(fmt.Errorf("cloning: %w", &os.PathError{Op: "ioctl", Path: "/d/x", Err: tt.err}), t.TempDir()+"/x")
		if !tt.is(err) || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, tt.err.(syscall.Errno)) {
			t.Errorf("classify(%v) = %v: want its kind, the cause kept, and %q in the text", tt.err, err, tt.want)
		}
	}
	plain := errors.New("io error")
	if got := classify(plain, "/x"); got != plain || errdefs.KindOf(got) != nil {
		t.Errorf("classify(plain) = %v, want it unchanged", got)
	}
}

// fill writes zeros into dir until its filesystem is full.
func fill(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatalf("filling %s: %v", dir, err)
			}
			break
		}
	}
	// Small writes take what the big ones left.
	for i := 0; ; i++ {
		g, err := os.Create(filepath.Join(dir, fmt.Sprintf("fill%d", i)))
		if err != nil {
			break
		}
		_, werr := g.Write(buf[:4096])
		g.Close()
		if werr != nil {
			break
		}
	}
}

// TestFullFilesystem: a full data filesystem is "resource exhausted" (a
// full disk, not a bug), and leaves nothing behind.
func TestFullFilesystem(t *testing.T) {
	mnt := disktest.Mount(t, "xfs", 300)
	src := filepath.Join(mnt, "rootfs.ext4")
	writeImage(t, src, 8)
	fill(t, mnt)
	dst := filepath.Join(mnt, "sandbox.ext4")
	err := Clone(src, dst)
	if !errdefs.IsResourceExhausted(err) || !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("Clone on a full filesystem: got %v, want resource exhausted wrapping ENOSPC", err)
	}
	if _, serr := os.Stat(dst); !errors.Is(serr, os.ErrNotExist) {
		t.Errorf("after a failed clone, %s: %v; want it gone", dst, serr)
	}
	if err := Probe(mnt); !errdefs.IsResourceExhausted(err) {
		t.Errorf("Probe on a full filesystem: got %v, want resource exhausted", err)
	}
}
