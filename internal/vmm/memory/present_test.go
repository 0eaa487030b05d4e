package memory

import (
	"os"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPageSetSize checks the bitmap's cost bound: 1 bit per 4 KiB page,
// so 128 KiB for a 4 GiB guest (split around the MMIO gap).
func TestPageSetSize(t *testing.T) {
	regions, err := Layout(4 << 30)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, r := range regions {
		total += newPageSet(r.Size).bytes()
	}
	if total > 128<<10 {
		t.Errorf("bitmaps for a 4 GiB guest: got %d bytes, want at most %d", total, 128<<10)
	}
	for _, tt := range []struct{ size, want uint64 }{
		{PageSize, 8}, {64 * PageSize, 8}, {65 * PageSize, 16}, {3 << 30, 96 << 10},
	} {
		if got := newPageSet(tt.size).bytes(); uint64(got) != tt.want {
			t.Errorf("bitmap for %d bytes: got %d bytes, want %d", tt.size, got, tt.want)
		}
	}
}

func TestPageSet(t *testing.T) {
	type span struct{ first, last uint64 }
	tests := []struct {
		name  string
		pages uint64
		add   []span
		query span
		has   bool
		lo    uint64 // first and last missing page of query, when !has
		hi    uint64
	}{
		{name: "empty", pages: 10, query: span{3, 3}, lo: 3, hi: 3},
		{name: "one page", pages: 10, add: []span{{3, 3}}, query: span{3, 3}, has: true},
		{name: "neighbour missing", pages: 10, add: []span{{3, 3}}, query: span{3, 4}, lo: 4, hi: 4},
		{name: "word boundary", pages: 200, add: []span{{60, 70}}, query: span{63, 64}, has: true},
		{name: "across words, missing ends", pages: 200, add: []span{{64, 127}}, query: span{60, 130}, lo: 60, hi: 130},
		{name: "hole in the middle word", pages: 200, add: []span{{0, 63}, {128, 199}}, query: span{0, 199}, lo: 64, hi: 127},
		{name: "gap of one page", pages: 200, add: []span{{0, 99}, {101, 199}}, query: span{0, 199}, lo: 100, hi: 100},
		{name: "whole set", pages: 128, add: []span{{0, 127}}, query: span{0, 127}, has: true},
		{name: "last page of a partial word", pages: 70, add: []span{{0, 68}}, query: span{0, 69}, lo: 69, hi: 69},
		{name: "marks outside the query ignored", pages: 200, add: []span{{0, 9}, {20, 29}}, query: span{10, 19}, lo: 10, hi: 19},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newPageSet(tt.pages * PageSize)
			for _, a := range tt.add {
				s.add(a.first, a.last)
			}
			if got := s.has(tt.query.first, tt.query.last); got != tt.has {
				t.Errorf("has(%d, %d): got %v, want %v", tt.query.first, tt.query.last, got, tt.has)
			}
			lo, hi, ok := s.missing(tt.query.first, tt.query.last)
			if ok == tt.has || (ok && (lo != tt.lo || hi != tt.hi)) {
				t.Errorf("missing(%d, %d): got %d, %d, %v; want %d, %d, %v", tt.query.first, tt.query.last, lo, hi, ok, tt.lo, tt.hi, !tt.has)
			}
			// Nothing outside the added spans may be marked.
			for p := uint64(0); p < tt.pages; p++ {
				in := false
				for _, a := range tt.add {
					in = in || (p >= a.first && p <= a.last)
				}
				if s.has(p, p) != in {
					t.Errorf("page %d: marked %v, want %v", p, !in, in)
				}
			}
		})
	}
}

// TestPageSetConcurrentAdd marks overlapping spans from many goroutines
// (run with -race): no mark may be lost to a concurrent one in the same
// word.
func TestPageSetConcurrentAdd(t *testing.T) {
	const pages, workers = 1 << 20, 8
	s := newPageSet(pages * PageSize)
	var wg sync.WaitGroup
	for w := range uint64(workers) {
		wg.Go(func() {
			// Worker w marks every page p with p%workers == w, one at a
			// time (so all workers hit every word), then a span.
			for p := w; p < pages; p += workers {
				s.add(p, p)
			}
			s.add(w*100, w*100+150)
		})
	}
	wg.Wait()
	if _, _, ok := s.missing(0, pages-1); ok || !s.has(0, pages-1) {
		t.Errorf("after concurrent marking: some of %d pages unmarked", pages)
	}
}

// TestSlicePopulatesOnlyUserfault checks which memory gets a bitmap, and
// that Slice marks exactly the pages of its range, in the right region,
// and nothing when it fails. The memory is not registered with a
// userfaultfd here: populate then maps zero pages, which is all this
// bookkeeping test needs (uffd_test.go and populate_test.go serve it).
func TestSlicePopulatesOnlyUserfault(t *testing.T) {
	const size = 3<<30 + 1<<20 // two regions: [0, 3G) and [4G, 4G+1M)
	plain, err := New(size, Backing{NoReserve: true})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	for i, r := range plain.regions {
		if r.present != nil {
			t.Errorf("plain memory region %d has a bitmap, want none (no cost without userfaultfd)", i)
		}
	}
	m, err := New(size, Backing{Userfault: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	marked := func(gpa uint64) bool {
		for _, r := range m.regions {
			if gpa >= r.GPA && gpa < r.GPA+r.Size {
				p := (gpa - r.GPA) / PageSize
				return r.present.has(p, p)
			}
		}
		t.Fatalf("gpa %#x outside RAM", gpa)
		return false
	}
	steps := []struct {
		gpa, n uint64
		ok     bool
		marks  []uint64 // pages (by gpa) marked afterwards
		clear  []uint64 // and still unmarked
	}{
		{gpa: 0x1ff8, n: 16, ok: true, marks: []uint64{0x1000, 0x2000}, clear: []uint64{0, 0x3000}},
		{gpa: 0x5000, n: 0, ok: true, clear: []uint64{0x5000}},
		{gpa: 3<<30 - 8, n: 16, ok: false, clear: []uint64{3<<30 - PageSize}}, // crosses into the MMIO gap
		{gpa: 4<<30 + 0xfff, n: 2, ok: true, marks: []uint64{4 << 30, 4<<30 + 0x1000}, clear: []uint64{4<<30 + 0x2000}},
		{gpa: 4<<30 + 1<<20 - 1, n: 2, ok: false, clear: []uint64{4<<30 + 1<<20 - PageSize}}, // past the end
		{gpa: 64 * PageSize, n: 130 * PageSize, ok: true, marks: []uint64{64 * PageSize, 127 * PageSize, 128 * PageSize, 193 * PageSize}, clear: []uint64{63 * PageSize, 194 * PageSize}},
	}
	for _, st := range steps {
		_, err := m.Slice(st.gpa, st.n)
		if (err == nil) != st.ok {
			t.Errorf("Slice(%#x, %#x): got %v, want ok=%v", st.gpa, st.n, err, st.ok)
		}
		for _, g := range st.marks {
			if !marked(g) {
				t.Errorf("after Slice(%#x, %#x): page %#x unmarked, want marked", st.gpa, st.n, g)
			}
		}
		for _, g := range st.clear {
			if marked(g) {
				t.Errorf("after Slice(%#x, %#x): page %#x marked, want unmarked", st.gpa, st.n, g)
			}
		}
	}
	f, err := openTemp(t)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fm, err := New(PageSize, Backing{File: f})
	if err != nil {
		t.Fatal(err)
	}
	defer fm.Close()
	if fm.regions[0].present != nil {
		t.Errorf("file-backed memory has a bitmap, want none")
	}
	if _, err := New(PageSize, Backing{File: f, Userfault: true}); err == nil || !strings.Contains(err.Error(), "exclusive") {
		t.Errorf("New with a file and Userfault: got %v, want an error saying they are exclusive", err)
	}
}

func openTemp(t *testing.T) (*os.File, error) {
	f, err := os.CreateTemp(t.TempDir(), "mem")
	if err != nil {
		return nil, err
	}
	return f, f.Truncate(PageSize)
}

// FuzzSliceUserfault feeds guest-chosen ranges (descriptor addresses and
// lengths come from the guest) to Slice on userfault memory with two
// regions: it must never panic, must accept exactly the ranges inside one
// region, and must leave exactly the pages of accepted ranges marked.
func FuzzSliceUserfault(f *testing.F) {
	f.Add(uint64(0x1ff8), uint64(16), uint64(4<<30), uint64(4096))
	f.Add(uint64(3<<30-8), uint64(16), uint64(0), uint64(0))
	f.Add(uint64(4<<30+64<<10-1), uint64(1), ^uint64(0), uint64(2))
	const size = 3<<30 + 64<<10
	m, err := New(size, Backing{Userfault: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { m.Close() })
	inRAM := func(gpa, n uint64) (int, bool) {
		for i, r := range m.regions {
			if gpa >= r.GPA && gpa-r.GPA < r.Size && n <= r.Size-(gpa-r.GPA) {
				return i, true
			}
		}
		return 0, false
	}
	f.Fuzz(func(t *testing.T, gpa1, n1, gpa2, n2 uint64) {
		// Fresh bitmaps (the mappings' zero pages stay, harmlessly).
		for i := range m.regions {
			m.regions[i].present = newPageSet(m.regions[i].Size)
		}
		want := map[[2]uint64]bool{}     // {region, page}
		wantWord := map[[2]uint64]bool{} // {region, bitmap word}
		for _, s := range [][2]uint64{{gpa1, n1 % (1 << 20)}, {gpa2, n2 % (1 << 20)}} {
			gpa, n := s[0], s[1]
			ri, ok := inRAM(gpa, n)
			b, err := m.Slice(gpa, n)
			if (err == nil) != ok || (ok && uint64(len(b)) != n) {
				t.Fatalf("Slice(%#x, %#x): got %d bytes, %v; want ok=%v", gpa, n, len(b), err, ok)
			}
			if ok && n > 0 {
				off := gpa - m.regions[ri].GPA
				for p := off / PageSize; p <= (off+n-1)/PageSize; p++ {
					want[[2]uint64{uint64(ri), p}] = true
					wantWord[[2]uint64{uint64(ri), p / 64}] = true
				}
			}
		}
		for ri, r := range m.regions {
			for w := range r.present.words {
				bits := r.present.words[w].Load()
				if bits == 0 && !wantWord[[2]uint64{uint64(ri), uint64(w)}] {
					continue
				}
				for b := range uint64(64) {
					p := uint64(w)*64 + b
					if got := bits&(1<<b) != 0; got != want[[2]uint64{uint64(ri), p}] {
						t.Fatalf("region %d page %d: marked %v, want %v", ri, p, got, !got)
					}
				}
			}
		}
	})
}

// TestCheckPopulate checks the probe New uses for MADV_POPULATE_READ: a
// zero-length madvise succeeds for an advice the kernel knows (this one,
// on the 5.14+ kernels the tests run on) and fails with EINVAL for one it
// does not, without touching memory either way.
func TestCheckPopulate(t *testing.T) {
	m, err := New(PageSize, Backing{NoReserve: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	addr := m.regions[0].HostAddr()
	if err := checkPopulate(addr); err != nil {
		t.Errorf("checkPopulate: %v, want nil on this kernel", err)
	}
	const unknownAdvice = 0x7fff
	if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(addr), 0, unknownAdvice); errno != unix.EINVAL {
		t.Errorf("zero-length madvise with unknown advice %#x: got %v, want EINVAL", unknownAdvice, errno)
	}
}
