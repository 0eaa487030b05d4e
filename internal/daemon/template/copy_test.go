package template

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestCopySparse copies a file of holes, zero blocks and data: the copy
// has the same bytes and size, and its zero blocks and holes take no space.
func TestCopySparse(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	data := bytes.Repeat([]byte("thaw"), 3*copyBlock/4) // three blocks
	for _, off := range []int64{0, 5 << 20, 9<<20 + 100, size - int64(len(data))} {
		if _, err := f.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
	}
	// Zero blocks written as data: a plain copy would allocate them.
	if _, err := f.WriteAt(make([]byte, 2<<20), 20<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst")
	if err := copySparse(src, dst); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != size || !bytes.Equal(got, want) {
		t.Fatalf("copy differs from the source (sizes %d and %d)", len(got), len(want))
	}
	fi, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	// Four writes of three blocks, the one at 9 MiB+100 straddling a
	// fourth; allow the filesystem a little metadata on top.
	if used := fi.Sys().(*syscall.Stat_t).Blocks * 512; used > 32*copyBlock {
		t.Errorf("copy uses %d bytes on disk, want at most %d: holes and zero blocks were written", used, 32*copyBlock)
	}
	if err := copySparse(src, dst); !errors.Is(err, fs.ErrExist) {
		t.Errorf("copying onto an existing file: got %v, want it refused", err)
	}
	if got, err := os.ReadFile(dst); err != nil || !bytes.Equal(got, want) {
		t.Errorf("a refused copy changed the existing file (%v)", err)
	}
	if err := copySparse(filepath.Join(dir, "missing"), filepath.Join(dir, "dst2")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("copying a missing file: got %v, want not exist", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "dst2")); !os.IsNotExist(err) {
		t.Errorf("a failed copy left its destination (%v)", err)
	}
}
