package memory

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLayout(t *testing.T) {
	tests := []struct {
		size    uint64
		want    []Region
		wantErr string
	}{
		{size: 128 << 20, want: []Region{{GPA: 0, Size: 128 << 20}}},
		{size: 3 << 30, want: []Region{{GPA: 0, Size: 3 << 30}}},
		{size: 3<<30 + 4096, want: []Region{{GPA: 0, Size: 3 << 30}, {GPA: 4 << 30, Size: 4096, FileOffset: 3 << 30}}},
		{size: 8 << 30, want: []Region{{GPA: 0, Size: 3 << 30}, {GPA: 4 << 30, Size: 5 << 30, FileOffset: 3 << 30}}},
		{size: 0, wantErr: "positive multiple"},
		{size: 4097, wantErr: "positive multiple"},
		{size: 2 << 40, wantErr: "limit"},
	}
	for _, tt := range tests {
		got, err := Layout(tt.size)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Layout(%d): got error %v, want one containing %q", tt.size, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("Layout(%d): %v", tt.size, err)
			continue
		}
		if len(got) != len(tt.want) {
			t.Errorf("Layout(%d): got %d regions, want %d", tt.size, len(got), len(tt.want))
			continue
		}
		for i := range got {
			if got[i].GPA != tt.want[i].GPA || got[i].Size != tt.want[i].Size || got[i].FileOffset != tt.want[i].FileOffset {
				t.Errorf("Layout(%d) region %d: got %+v, want %+v", tt.size, i, got[i], tt.want[i])
			}
		}
	}
}

func TestSliceBounds(t *testing.T) {
	const size = 3<<30 + 1<<20 // two regions: [0, 3G) and [4G, 4G+1M)
	m, err := New(size, Backing{NoReserve: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	tests := []struct {
		gpa, n uint64
		ok     bool
	}{
		{0, 8, true},
		{3<<30 - 8, 8, true},
		{3<<30 - 8, 9, false},    // runs into the MMIO gap
		{3 << 30, 1, false},      // inside the gap
		{4<<30 - 1, 2, false},    // starts in the gap
		{4 << 30, 1 << 20, true}, // the whole high region
		{4 << 30, 1<<20 + 1, false},
		{4<<30 + 1<<20, 1, false},  // past the end
		{8, ^uint64(0), false},     // wraps around
		{^uint64(0) - 2, 8, false}, // starts past everything
		{4<<30 + 16, 0, true},      // empty slice inside RAM
	}
	for _, tt := range tests {
		s, err := m.Slice(tt.gpa, tt.n)
		if tt.ok != (err == nil) {
			t.Errorf("Slice(%#x, %#x): got err %v, want ok=%v", tt.gpa, tt.n, err, tt.ok)
			continue
		}
		if err == nil && uint64(len(s)) != tt.n {
			t.Errorf("Slice(%#x, %#x): got %d bytes", tt.gpa, tt.n, len(s))
		}
	}
	if err := m.PutUint64(4<<30+8, 0x1122334455667788); err != nil {
		t.Fatal(err)
	}
	got, err := m.Uint64(4<<30 + 8)
	if err != nil || got != 0x1122334455667788 {
		t.Errorf("Uint64 after PutUint64: got %#x, %v, want 0x1122334455667788", got, err)
	}
	if err := m.Write(3<<30-4, make([]byte, 8)); err == nil {
		t.Errorf("Write across the MMIO gap: got nil error")
	}
	regions := m.Regions()
	if len(regions) != 2 || regions[1].HostAddr() == 0 || regions[1].FileOffset != 3<<30 {
		t.Errorf("Regions: got %+v, want two with the second at file offset 3 GiB", regions)
	}
}

// TestFileBacking checks the MAP_PRIVATE file backing a File restore uses:
// guest memory starts as the file's contents and guest writes never reach
// the file.
func TestFileBacking(t *testing.T) {
	const size = 1 << 20
	content := bytes.Repeat([]byte("thaw"), size/4)
	path := filepath.Join(t.TempDir(), "mem")
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := New(size, Backing{File: f})
	if err != nil {
		t.Fatal(err)
	}
	s, err := m.Slice(0, size)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s, content) {
		t.Fatalf("file-backed memory differs from the file")
	}
	copy(s, "XXXX")
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(after, content) {
		t.Errorf("a guest write reached the memory file: got %q at its start, want %q", after[:4], "thaw")
	}

	if _, err := New(2*size, Backing{File: f}); err == nil || !strings.Contains(err.Error(), "smaller") {
		t.Errorf("New with a too-small memory file: got %v, want an error saying it is smaller", err)
	}
}
