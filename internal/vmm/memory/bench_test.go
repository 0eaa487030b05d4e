package memory

import "testing"

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
