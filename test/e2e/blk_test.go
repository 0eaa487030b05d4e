package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/fcapi"
)

// fnv is the probe's checksum (FNV-1a, 64-bit).
func fnv(b []byte) uint64 {
	h := uint64(0xcbf29ce484222325)
	for _, c := range b {
		h = (h ^ uint64(c)) * 0x100000001b3
	}
	return h
}

// TestBlockDevice boots the probe with a root drive it reads, writes,
// reads back and flushes through virtio-blk, then checks the file on the
// host; a read-only drive must refuse the write.
func TestBlockDevice(t *testing.T) {
	for _, ro := range []bool{false, true} {
		t.Run(fmt.Sprintf("read_only=%v", ro), func(t *testing.T) {
			const size = 1 << 20
			disk := make([]byte, size)
			rng := rand.New(rand.NewPCG(1, 2))
			for i := range disk {
				disk[i] = byte(rng.Uint32())
			}
			path := filepath.Join(t.TempDir(), "disk.img")
			if err := os.WriteFile(path, disk, 0o644); err != nil {
				t.Fatal(err)
			}
			p := startVMM(t)
			c := p.client(t)
			if err := c.PutBootSource(ctx(t), fcapi.BootSource{KernelImagePath: probeELF(t), BootArgs: "probe.pages=1 probe.ticks=1 probe.spin=10 probe.blk.write=1"}); err != nil {
				t.Fatal(err)
			}
			if err := c.PutDrive(ctx(t), fcapi.Drive{DriveID: "rootfs", PathOnHost: path, IsRootDevice: true, IsReadOnly: ro}); err != nil {
				t.Fatal(err)
			}
			if err := c.InstanceStart(ctx(t)); err != nil {
				t.Fatal(err)
			}
			if code := p.wait(t, 60*time.Second); code != 0 {
				t.Fatalf("exit code %d; stderr:\n%s", code, p.stderr.String())
			}
			out := p.stdout.String()
			mode, roFlag, writeStatus := "rw", 0, 0
			if ro {
				mode, roFlag, writeStatus = "ro", 1, 1 // VIRTIO_BLK_S_IOERR
			}
			want := []string{
				"virtio_mmio.device=4K@0xd0000000:5 root=/dev/vda " + mode,
				fmt.Sprintf("probe: blk capacity=%d ro=%d\n", size/512, roFlag),
				"probe: blk id status=0 id=rootfs\n",
				fmt.Sprintf("probe: blk read sectors=8 status=0 sum=%016x\n", fnv(disk[:4096])),
				fmt.Sprintf("probe: blk write sector=%d status=%d\n", size/512-1, writeStatus),
				"probe: blk read past end status=1\n",
				"probe: done\n",
			}
			if !ro {
				want = append(want, "probe: blk readback ok\n", "probe: blk flush status=0\n")
			}
			for _, w := range want {
				if !strings.Contains(out, w) {
					t.Errorf("no %q in the guest's output:\n%s", w, out)
				}
			}
			after, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			last := after[size-512:]
			pattern := make([]byte, 512)
			for i := range pattern {
				pattern[i] = byte(i*7 + 3)
			}
			if got := bytes.Equal(last, pattern); got == ro {
				t.Errorf("last sector holds the guest's pattern: %v, want %v", got, !ro)
			}
			if !bytes.Equal(after[:size-512], disk[:size-512]) {
				t.Errorf("the guest changed sectors it never wrote")
			}
		})
	}
}
