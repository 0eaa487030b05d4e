package main

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestCopySparse checks that copySparse copies every byte and leaves
// all-zero blocks as holes when it cannot reflink (the test's temporary
// directory is on ext4 or tmpfs here; on XFS/btrfs it reflinks, and the
// content check still holds).
func TestCopySparse(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int64
		data map[int64][]byte // offset → bytes written there
	}{
		{"empty", 0, nil},
		{"all holes", 8 << 20, nil},
		{"data at both ends", 8 << 20, map[int64][]byte{0: []byte("head"), 8<<20 - 3: []byte("end")}},
		{"unaligned tail", 3<<20 + 100, map[int64][]byte{1 << 20: bytes.Repeat([]byte{7}, 5000), 3<<20 + 99: {1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
			f, err := os.Create(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Truncate(tc.size); err != nil {
				t.Fatal(err)
			}
			for off, b := range tc.data {
				if _, err := f.WriteAt(b, off); err != nil {
					t.Fatal(err)
				}
			}
			f.Close()
			if err := copySparse(src, dst); err != nil {
				t.Fatal(err)
			}
			want, _ := os.ReadFile(src)
			got, err := os.ReadFile(dst)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("copy differs: got %d bytes, want %d", len(got), len(want))
			}
			var st syscall.Stat_t
			if err := syscall.Stat(dst, &st); err != nil {
				t.Fatal(err)
			}
			// Data blocks are at most 4 KiB per written range plus one
			// block either side; a dense copy would be the whole size.
			var limit int64 = 64 << 10
			for _, b := range tc.data {
				limit += int64(len(b)) + 8<<10
			}
			if allocated := st.Blocks * 512; allocated > limit {
				t.Errorf("copy allocates %d bytes, want at most %d (holes kept)", allocated, limit)
			}
		})
	}
}

func TestCopySparseRefusesExisting(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	os.WriteFile(src, []byte("new"), 0o600)
	os.WriteFile(dst, []byte("old"), 0o600)
	if err := copySparse(src, dst); err == nil {
		t.Fatal("copySparse over an existing file: got no error, want one")
	}
	if b, _ := os.ReadFile(dst); string(b) != "old" {
		t.Errorf("existing file now holds %q, want it untouched", b)
	}
}
