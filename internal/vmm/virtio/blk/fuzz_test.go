package blk

import (
	"os"
	"testing"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio/virtiotest"
)

// FuzzRequest sends block requests with fuzzed type, sector, data and
// buffer layout. The device must answer every one with a valid status (or
// zero length when there is no status byte), never claim more bytes than
// the writable buffers hold, and never change the drive's size.
func FuzzRequest(f *testing.F) {
	f.Add(uint32(abi.BlkTIn), uint64(0), []byte{}, uint16(513), uint8(0))
	f.Add(uint32(abi.BlkTOut), uint64(3), make([]byte, 512), uint16(1), uint8(16))
	f.Add(uint32(abi.BlkTGetID), uint64(0), []byte{}, uint16(21), uint8(2))
	f.Add(uint32(abi.BlkTFlush), uint64(0), []byte{1, 2}, uint16(0), uint8(5))
	r := newRig(f, Config{ID: "fuzz"}, v1)
	f.Fuzz(func(t *testing.T, typ uint32, sector uint64, payload []byte, nwrite uint16, split uint8) {
		if len(payload) > 64<<10 {
			return
		}
		r.drv.T = t
		mark := r.drv.Mark()
		defer r.drv.Release(mark)
		readable := append(header(typ, sector), payload...)
		cut := int(split) % (len(readable) + 1)
		var bufs []virtiotest.Buf
		for _, part := range [][]byte{readable[:cut], readable[cut:]} {
			if len(part) > 0 {
				bufs = append(bufs, r.drv.Readable(part))
			}
		}
		var wtotal uint32
		if nwrite > 0 {
			w := uint32(nwrite)
			if split%2 == 1 && w > 1 {
				bufs = append(bufs, r.drv.Writable(w/2))
				w -= w / 2
			}
			bufs = append(bufs, r.drv.Writable(w))
			wtotal = uint32(nwrite)
		}
		head, ok := r.q.Add(bufs...)
		if !ok {
			t.Fatal("queue full")
		}
		r.q.Kick()
		h, n, ok := r.q.Used()
		if !ok || h != head {
			t.Fatalf("request not completed")
		}
		if n > wtotal {
			t.Fatalf("used length %d exceeds the %d writable bytes", n, wtotal)
		}
		if wtotal > 0 {
			if n == 0 {
				t.Fatal("request with a status byte answered with zero length")
			}
			last := bufs[len(bufs)-1]
			if s := r.drv.Bytes(last.Addr+uint64(last.Len)-1, 1)[0]; s > abi.BlkSUnsupp {
				t.Fatalf("status %d is not a virtio-blk status", s)
			}
		} else if n != 0 {
			t.Fatalf("request without status answered with length %d", n)
		}
		if fi, err := os.Stat(r.path); err != nil || fi.Size() != sectors*512 {
			t.Fatalf("drive size changed: %v %v", fi.Size(), err)
		}
	})
}
