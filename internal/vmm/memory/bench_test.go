package memory

import (
	"runtime"
	"testing"

	"github.com/thawvm/thaw/internal/testenv"
)

// BenchmarkSlice is Slice on pages already present, the virtqueue's
// common case, with and without the userfault bitmap: the bitmap's fast
// path must stay a few nanoseconds.
//
//	go test -run '^$' -bench Slice ./internal/vmm/memory/
func BenchmarkSlice(b *testing.B) {
	const size = 64 << 20
	for _, bc := range []struct {
		name    string
		backing Backing
	}{
		{"plain", Backing{}},
		{"userfault", Backing{Userfault: true}},
	} {
		m, err := New(size, bc.backing)
		if err != nil {
			b.Fatal(err)
		}
		// Fault everything in first (zero pages: no page server here).
		if _, err := m.Slice(0, size); err != nil {
			b.Fatal(err)
		}
		for _, sz := range []struct {
			name string
			n    uint64
		}{{"16B", 16}, {"64KiB", 64 << 10}} {
			b.Run(bc.name+"/"+sz.name, func(b *testing.B) {
				gpa := uint64(0)
				for b.Loop() {
					if _, err := m.Slice(gpa, sz.n); err != nil {
						b.Fatal(err)
					}
					gpa = (gpa + 1<<20 + 16) % (size - 1<<20)
				}
			})
		}
		m.Close()
	}
}

// BenchmarkFirstTouch reads one byte of a page the page server (in this
// process, on demand) has not served yet: through Slice, which populates
// it inside madvise(2), against a plain load from the mapping, the
// user-mode fault Slice avoids (safe here only because the benchmark's one
// reader leaves the page server a P).
//
//	go test -run '^$' -bench FirstTouch -benchtime 8000x ./internal/vmm/memory/
//	go test -run '^$' -bench FirstTouch/populate -benchtime 8000x -cpu 1 ./internal/vmm/memory/
func BenchmarkFirstTouch(b *testing.B) {
	testenv.RequireUFFD(b)
	const size = 32 << 20
	for _, bc := range []struct {
		name string
		read func(s *served, gpa uint64) (byte, error)
	}{
		{"populate", func(s *served, gpa uint64) (byte, error) {
			p, err := s.mem.Slice(gpa, 1)
			if err != nil {
				return 0, err
			}
			return p[0], nil
		}},
		{"user-fault", func(s *served, gpa uint64) (byte, error) {
			return s.mem.regions[0].Host[gpa], nil
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			if bc.name == "user-fault" && runtime.GOMAXPROCS(0) < 2 {
				b.Skip("a user-mode fault with one P is the deadlock Slice prevents")
			}
			var s *served
			defer func() {
				if s != nil {
					s.close()
				}
			}()
			gpa := uint64(size)
			for b.Loop() {
				if gpa == size {
					b.StopTimer()
					if s != nil {
						if err := s.close(); err != nil {
							b.Fatal(err)
						}
					}
					var err error
					if s, err = newServed(b.TempDir(), size); err != nil {
						b.Fatal(err)
					}
					s.start()
					gpa = 0
					b.StartTimer()
				}
				v, err := bc.read(s, gpa)
				if err != nil || v != s.content[gpa] {
					b.Fatalf("page at %#x: got %q, %v, want %q", gpa, v, err, s.content[gpa])
				}
				gpa += PageSize
			}
		})
	}
}
