package disk

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/thawvm/thaw/internal/daemon/disk/disktest"
)

// BenchmarkSandboxDisk compares, side by side on one loop-mounted XFS
// filesystem, giving a sandbox its disk by reflink (Clone) and by a full
// copy, for a 256 MiB template disk. Reported: time per disk and bytes of
// filesystem space each disk consumed. Run it with a fixed count
// (-benchtime 5x): every copy stays on the 4 GiB test filesystem until the
// end.
func BenchmarkSandboxDisk(b *testing.B) {
	const mib = 256
	mnt := disktest.Mount(b, "xfs", 4096) // sparse: costs what is written
	src := filepath.Join(mnt, "rootfs.ext4")
	f, err := os.Create(src)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := range mib {
		for j := range buf {
			buf[j] = byte(i + j*7)
		}
		f.Write(buf)
	}
	f.Close()
	copyFile := func(src, dst string) error {
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		// A plain read/write copy: io.Copy would use copy_file_range,
		// which XFS may itself turn into a reflink.
		if _, err := io.CopyBuffer(struct{ io.Writer }{out}, struct{ io.Reader }{in}, make([]byte, 1<<20)); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	}
	for _, m := range []struct {
		name string
		make func(src, dst string) error
	}{{"reflink", Clone}, {"copy", copyFile}} {
		b.Run(fmt.Sprintf("%s/%dMiB", m.name, mib), func(b *testing.B) {
			var used int64
			i := 0
			for b.Loop() {
				dst := filepath.Join(mnt, fmt.Sprintf("%s-%d", m.name, i))
				i++
				b.StopTimer()
				before := usedBytes(b, mnt)
				b.StartTimer()
				if err := m.make(src, dst); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				// Disks are kept until the end: XFS frees a removed
				// file's blocks in the background, which would blur
				// the next measurement.
				used += usedBytes(b, mnt) - before
				b.StartTimer()
			}
			b.ReportMetric(float64(used)/float64(i), "bytes-used/disk")
		})
	}
}
