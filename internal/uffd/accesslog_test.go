package uffd_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/thawvm/thaw/internal/uffd"
)

// writeLog records offs for src at path.
func writeLog(t *testing.T, path string, src uffd.Source, offs []uint64) {
	t.Helper()
	rec, err := uffd.CreateRecorder(path, src, 4096)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range offs {
		rec.Record(o)
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestRecorderRoundTrip(t *testing.T) {
	_, src := memFile(t, 1<<20, 9)
	path := filepath.Join(t.TempDir(), "log")
	// Duplicates and the second install of a page are not recorded;
	// offsets inside a page record the page.
	writeLog(t, path, src, []uint64{0x5000, 0x1000, 0x5000, 0x3004, 0xff000, 0x1000})
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	l, err := uffd.ReadAccessLog(f)
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{0x5000, 0x1000, 0x3000, 0xff000}; !reflect.DeepEqual(l.Offsets, want) {
		t.Errorf("got offsets %#x, want %#x", l.Offsets, want)
	}
	if l.PageSize != 4096 || l.FileSize != 1<<20 {
		t.Errorf("got page size %d, file size %d; want 4096, %d", l.PageSize, l.FileSize, 1<<20)
	}
	if err := l.Matches(src); err != nil {
		t.Errorf("log does not match its own file: %v", err)
	}
}

func TestReadAccessLog(t *testing.T) {
	const hdr = "thaw-access-log v1 page_size=4096 file_size=65536 file_id=00ff\n"
	const hugeHdr = "thaw-access-log v1 page_size=4096 file_size=1099511627776 file_id=00ff\n"
	tests := []struct {
		name string
		in   string
		want []uint64
		err  string
	}{
		{"empty log", hdr, nil, ""},
		{"records", hdr + "3000\n0\nf000\n", []uint64{0x3000, 0, 0xf000}, ""},
		{"truncated last line dropped", hdr + "3000\n1", []uint64{0x3000}, ""},
		{"truncated header", "thaw-access-log v1 page_si", nil, "reading access log header"},
		{"empty file", "", nil, "reading access log header"},
		{"not a log", "hello world\n", nil, "not a thaw access log"},
		{"future version", "thaw-access-log v2 page_size=4096 file_size=65536 file_id=00\n", nil, "version"},
		{"bad page size", "thaw-access-log v1 page_size=3000 file_size=65536 file_id=00\n", nil, "page_size=3000"},
		{"bad file size", "thaw-access-log v1 page_size=4096 file_size=100 file_id=00\n", nil, "file_size=100"},
		{"bad id", "thaw-access-log v1 page_size=4096 file_size=65536 file_id=zz\n", nil, "not hex"},
		{"unknown field", "thaw-access-log v1 page_size=4096 file_size=65536 color=red\n", nil, "unknown field"},
		{"unaligned", hdr + "3001\n", nil, "not a 4096-byte page"},
		{"past the file", hdr + "10000\n", nil, "not a 4096-byte page inside"},
		{"duplicate", hdr + "3000\n3000\n", nil, "line 3: offset 0x3000 appears twice"},
		{"first of two duplicates", hdr + "4000\n3000\n0\n3000\n4000\n", nil, "line 5: offset 0x3000 appears twice"},
		{"duplicate before a cut last line", hdr + "0\n0\n1", nil, "line 3: offset 0x0 appears twice"},
		// A short log of a 1 TiB file: repeats found by sorting, not a bitmap.
		{"records of a huge file", hugeHdr + "3000\n0\nfffffff000\n", []uint64{0x3000, 0, 0xfffffff000}, ""},
		{"duplicate in a huge file", hugeHdr + "4000\n3000\n0\n3000\n4000\n", nil, "line 5: offset 0x3000 appears twice"},
		{"not hex", hdr + "x\n", nil, "not a hex page offset"},
		{"sign", hdr + "+3000\n", nil, "not a hex page offset"},
		{"long line", hdr + strings.Repeat("0", 40) + "\n", nil, "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := uffd.ReadAccessLog(strings.NewReader(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %v, want an error containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(l.Offsets, tt.want) {
				t.Errorf("got %#x, want %#x", l.Offsets, tt.want)
			}
		})
	}
}

func FuzzReadAccessLog(f *testing.F) {
	f.Add([]byte("thaw-access-log v1 page_size=4096 file_size=65536 file_id=00ff\n3000\n0\nf000\n"))
	f.Add([]byte("thaw-access-log v1 page_size=2097152 file_size=4194304 file_id=ab\n200000\n"))
	f.Add([]byte("thaw-access-log v1 page_size=4096 file_size=65536 file_id=00ff\n3000\n1"))
	f.Fuzz(func(t *testing.T, in []byte) {
		l, err := uffd.ReadAccessLog(bytes.NewReader(in))
		if err != nil {
			return
		}
		seen := map[uint64]bool{}
		for _, o := range l.Offsets {
			if o%l.PageSize != 0 || o >= l.FileSize || seen[o] {
				t.Fatalf("accepted offset %#x (page size %d, file size %d, seen %t)", o, l.PageSize, l.FileSize, seen[o])
			}
			seen[o] = true
		}
	})
}

func TestLoadAccessLogIgnoresOtherFiles(t *testing.T) {
	_, src := memFile(t, 1<<20, 10)
	_, sameSize := memFile(t, 1<<20, 11)
	_, otherSize := memFile(t, 2<<20, 10)
	path := filepath.Join(t.TempDir(), "log")
	writeLog(t, path, src, []uint64{0x1000})
	tests := []struct {
		name string
		src  uffd.Source
		path string
		warn string
	}{
		{"its own file", src, path, ""},
		{"same size, other content", sameSize, path, "belongs to another memory file"},
		{"other size", otherSize, path, "2097152 bytes"},
		{"missing log", src, path + ".missing", "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			l := uffd.LoadAccessLog(tt.path, tt.src, slog.New(slog.NewTextHandler(&logs, nil)))
			if tt.warn == "" {
				if l == nil || len(l.Offsets) != 1 {
					t.Fatalf("got %v (logs %q), want the log", l, logs.String())
				}
				return
			}
			if l != nil {
				t.Errorf("got a log, want it ignored")
			}
			if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), tt.warn) {
				t.Errorf("logs %q, want a warning containing %q", logs.String(), tt.warn)
			}
		})
	}
}

func ExampleMarshalHandshake() {
	fmt.Printf("%s\n", uffd.MarshalHandshake([]uffd.Region{{BaseHostVirtAddr: 140019538853888, Size: 134217728, Offset: 0, PageSize: 4096}}))
	// Output: [{"base_host_virt_addr":140019538853888,"size":134217728,"offset":0,"page_size":4096,"page_size_kib":4096}]
}

// TestRecorderSurvivesCrash reads the log while the recorder is still open,
// as after a crash: what was flushed is there, and a record cut short
// mid-write is dropped.
func TestRecorderSurvivesCrash(t *testing.T) {
	_, src := memFile(t, 1<<20, 14)
	path := filepath.Join(t.TempDir(), "log")
	rec, err := uffd.CreateRecorder(path, src, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Close()
	for p := range uint64(10) {
		rec.Record(p * 4096)
	}
	if err := rec.Flush(); err != nil { // the server flushes whenever it goes idle
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("a0") // a crash in the middle of writing "a000\n"
	f.Close()
	r, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	l, err := uffd.ReadAccessLog(r)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Offsets) != 10 {
		t.Errorf("got %d records, want the 10 flushed before the crash", len(l.Offsets))
	}
}

// TestReadAccessLogAllocations reads a large template's log: allocations
// must not grow with the record count (the log is read on every create,
// and an idle shim never gives the garbage back).
func TestReadAccessLogAllocations(t *testing.T) {
	const records = 16384
	// A file twice the log (repeats found with a bitmap) and a 1 TiB
	// file (a bitmap would be 32 MiB: found by sorting).
	for _, fileSize := range []uint64{2 * records * 4096, 1 << 40} {
		var b bytes.Buffer
		fmt.Fprintf(&b, "thaw-access-log v1 page_size=4096 file_size=%d file_id=00\n", fileSize)
		for i := range records {
			fmt.Fprintf(&b, "%x\n", uint64((i*7919)%(2*records))*4096) // distinct: 7919 is prime
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		l, err := uffd.ReadAccessLog(bytes.NewReader(b.Bytes()))
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Offsets) != records {
			t.Fatalf("file of %d bytes: got %d records, want %d", fileSize, len(l.Offsets), records)
		}
		// The reader's 64 KiB buffer, the offsets grown by doubling
		// (twice their size in all) and a sorted copy or a bitmap: at
		// most 3 x 8 bytes a record, and slack for size classes and the
		// race detector. A set of the offsets and a slice per line took
		// 1.9 MB and 16566 objects here.
		const maxBytes = 4*8*records + 128<<10
		if objs, bytes := after.Mallocs-before.Mallocs, after.TotalAlloc-before.TotalAlloc; objs > 64 || bytes > maxBytes {
			t.Errorf("file of %d bytes: reading %d records allocated %d objects, %d bytes: want at most 64 objects and %d bytes", fileSize, records, objs, bytes, maxBytes)
		}
	}
}
