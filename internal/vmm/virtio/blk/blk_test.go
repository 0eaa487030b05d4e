package blk

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio/virtiotest"
)

const (
	v1      = 1 << abi.FVersion1
	sectors = 64
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// pattern returns the drive's initial contents: every byte depends on its
// offset, so misplaced reads show.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/512)
	}
	return b
}

type rig struct {
	path string
	dev  *Device
	mmio *virtio.MMIO
	drv  *virtiotest.Driver
	q    *virtiotest.Queue
}

func newRig(t testing.TB, cfg Config, features uint64) *rig {
	t.Helper()
	r := &rig{path: filepath.Join(t.TempDir(), "disk.img")}
	if err := os.WriteFile(r.path, pattern(sectors*512), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.Path = r.path
	dev, err := New(cfg, discard())
	if err != nil {
		t.Fatal(err)
	}
	r.dev = dev
	mem := virtiotest.NewMem(t, 0x100000, 4<<20)
	irq := virtiotest.NewIRQ()
	r.mmio = virtio.NewMMIO(dev, mem, irq, discard())
	t.Cleanup(func() {
		if err := r.mmio.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	r.drv = virtiotest.NewDriver(t, r.mmio, mem, irq)
	r.drv.Init(features, 16)
	r.q = r.drv.Queues[0]
	return r
}

func header(typ uint32, sector uint64) []byte {
	h := make([]byte, abi.BlkReqHeaderSize)
	le.PutUint32(h[abi.BlkReqOffType:], typ)
	le.PutUint64(h[abi.BlkReqOffSector:], sector)
	return h
}

// submit adds bufs as one chain, kicks, and returns the used length and the
// status byte (the last byte of the last writable buffer).
func (r *rig) submit(t *testing.T, bufs ...virtiotest.Buf) (uint32, byte) {
	t.Helper()
	head, ok := r.q.Add(bufs...)
	if !ok {
		t.Fatal("queue full")
	}
	r.q.Kick()
	h, n, ok := r.q.Used()
	if !ok || h != head {
		t.Fatalf("request not completed: used (%d, %v), want head %d", h, ok, head)
	}
	last := bufs[len(bufs)-1]
	if !last.Write {
		return n, 0xff
	}
	return n, r.drv.Bytes(last.Addr+uint64(last.Len)-1, 1)[0]
}

func (r *rig) file(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(r.path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReadWriteFlushID(t *testing.T) {
	r := newRig(t, Config{ID: "rootfs"}, v1)
	d := r.drv
	// Config space: capacity.
	b := make([]byte, 8)
	r.mmio.Read(abi.MMIOConfig+abi.BlkConfigOffCapacity, b)
	if got := le.Uint64(b); got != sectors {
		t.Errorf("capacity: got %d, want %d", got, sectors)
	}
	if f := d.DeviceFeatures(); f&(1<<abi.BlkFRO) != 0 || f&(1<<abi.BlkFFlush) == 0 {
		t.Errorf("features 0x%x: want FLUSH without RO", f)
	}

	// Read sectors 3..5 into two buffers split mid-sector.
	a, bb := d.Writable(700), d.Writable(3*512-700)
	st := d.Writable(1)
	n, s := r.submit(t, d.Readable(header(abi.BlkTIn, 3)), a, bb, st)
	if s != abi.BlkSOK || n != 3*512+1 {
		t.Fatalf("read: status %d len %d, want 0 and %d", s, n, 3*512+1)
	}
	got := append(append([]byte{}, d.Bytes(a.Addr, uint64(a.Len))...), d.Bytes(bb.Addr, uint64(bb.Len))...)
	if want := pattern(sectors * 512)[3*512 : 6*512]; !bytes.Equal(got, want) {
		t.Error("read returned the wrong bytes")
	}

	// Write two sectors at 10 with the header and data in one buffer.
	data := bytes.Repeat([]byte("thaw"), 256)
	n, s = r.submit(t, d.Readable(append(header(abi.BlkTOut, 10), data...)), d.Writable(1))
	if s != abi.BlkSOK || n != 1 {
		t.Fatalf("write: status %d len %d, want 0 and 1", s, n)
	}
	if got := r.file(t)[10*512 : 12*512]; !bytes.Equal(got, data) {
		t.Error("write did not reach the file")
	}
	if got := r.file(t)[12*512:]; !bytes.Equal(got, pattern(sectors * 512)[12*512:]) {
		t.Error("write touched bytes past its sectors")
	}

	n, s = r.submit(t, d.Readable(header(abi.BlkTFlush, 0)), d.Writable(1))
	if s != abi.BlkSOK || n != 1 {
		t.Errorf("flush: status %d len %d, want 0 and 1", s, n)
	}

	id := d.Writable(abi.BlkIDBytes)
	n, s = r.submit(t, d.Readable(header(abi.BlkTGetID, 0)), id, d.Writable(1))
	if s != abi.BlkSOK || n != abi.BlkIDBytes+1 {
		t.Errorf("get-id: status %d len %d", s, n)
	}
	if got := string(bytes.TrimRight(d.Bytes(id.Addr, abi.BlkIDBytes), "\x00")); got != "rootfs" {
		t.Errorf("get-id: got %q, want %q", got, "rootfs")
	}

	// The last sector is readable; one past it is not.
	n, s = r.submit(t, d.Readable(header(abi.BlkTIn, sectors-1)), d.Writable(512), d.Writable(1))
	if s != abi.BlkSOK || n != 513 {
		t.Errorf("read of the last sector: status %d len %d", s, n)
	}
}

// TestIndirectRequest also runs with VIRTIO_F_EVENT_IDX, as Linux would
// negotiate it.
func TestIndirectRequest(t *testing.T) {
	r := newRig(t, Config{ID: "d"}, v1|1<<abi.FIndirectDesc|1<<abi.FEventIdx)
	d := r.drv
	out := d.Writable(512)
	st := d.Writable(1)
	head, _ := r.q.AddIndirect(d.Readable(header(abi.BlkTIn, 1)), out, st)
	r.q.Kick()
	if h, n, ok := r.q.Used(); !ok || h != head || n != 513 {
		t.Fatalf("used (%d, %d, %v), want (%d, 513, true)", h, n, ok, head)
	}
	if !bytes.Equal(d.Bytes(out.Addr, 512), pattern(sectors * 512)[512:1024]) {
		t.Error("indirect read returned the wrong bytes")
	}
}

func TestReadOnly(t *testing.T) {
	r := newRig(t, Config{ID: "ro", ReadOnly: true}, v1)
	d := r.drv
	if f := d.DeviceFeatures(); f&(1<<abi.BlkFRO) == 0 {
		t.Errorf("features 0x%x: want VIRTIO_BLK_F_RO", f)
	}
	_, s := r.submit(t, d.Readable(append(header(abi.BlkTOut, 0), make([]byte, 512)...)), d.Writable(1))
	if s != abi.BlkSIOErr {
		t.Errorf("write to read-only drive: status %d, want IOERR", s)
	}
	if !bytes.Equal(r.file(t), pattern(sectors*512)) {
		t.Error("write to a read-only drive changed the file")
	}
	if _, s := r.submit(t, d.Readable(header(abi.BlkTIn, 0)), d.Writable(512), d.Writable(1)); s != abi.BlkSOK {
		t.Errorf("read from read-only drive: status %d, want OK", s)
	}
	if _, s := r.submit(t, d.Readable(header(abi.BlkTFlush, 0)), d.Writable(1)); s != abi.BlkSOK {
		t.Errorf("flush of read-only drive: status %d, want OK", s)
	}
}

// TestBadRequests sends requests that are well-formed chains but wrong
// block requests: each gets an error status and the file stays unchanged.
func TestBadRequests(t *testing.T) {
	r := newRig(t, Config{ID: "d"}, v1)
	d := r.drv
	hdr := func(typ uint32, sector uint64) virtiotest.Buf { return d.Readable(header(typ, sector)) }
	for _, tt := range []struct {
		name   string
		bufs   func() []virtiotest.Buf
		status byte
	}{
		{"read past the end", func() []virtiotest.Buf {
			return []virtiotest.Buf{hdr(abi.BlkTIn, sectors), d.Writable(512), d.Writable(1)}
		}, abi.BlkSIOErr},
		{"read straddling the end", func() []virtiotest.Buf {
			return []virtiotest.Buf{hdr(abi.BlkTIn, sectors-1), d.Writable(1024), d.Writable(1)}
		}, abi.BlkSIOErr},
		{"sector overflowing 64 bits", func() []virtiotest.Buf {
			return []virtiotest.Buf{hdr(abi.BlkTIn, ^uint64(0)), d.Writable(512), d.Writable(1)}
		}, abi.BlkSIOErr},
		{"write past the end", func() []virtiotest.Buf {
			return []virtiotest.Buf{d.Readable(append(header(abi.BlkTOut, sectors), make([]byte, 512)...)), d.Writable(1)}
		}, abi.BlkSIOErr},
		{"read of a partial sector", func() []virtiotest.Buf {
			return []virtiotest.Buf{hdr(abi.BlkTIn, 0), d.Writable(100), d.Writable(1)}
		}, abi.BlkSIOErr},
		{"write of a partial sector", func() []virtiotest.Buf {
			return []virtiotest.Buf{d.Readable(append(header(abi.BlkTOut, 0), make([]byte, 5)...)), d.Writable(1)}
		}, abi.BlkSIOErr},
		{"short header", func() []virtiotest.Buf {
			return []virtiotest.Buf{d.Readable(header(abi.BlkTIn, 0)[:12]), d.Writable(513)}
		}, abi.BlkSIOErr},
		{"header in a writable buffer", func() []virtiotest.Buf {
			return []virtiotest.Buf{d.Writable(16), d.Writable(1)}
		}, abi.BlkSIOErr},
		{"read with readable data", func() []virtiotest.Buf {
			return []virtiotest.Buf{d.Readable(append(header(abi.BlkTIn, 0), make([]byte, 512)...)), d.Writable(1)}
		}, abi.BlkSIOErr},
		{"write with writable data", func() []virtiotest.Buf {
			return []virtiotest.Buf{d.Readable(append(header(abi.BlkTOut, 0), make([]byte, 512)...)), d.Writable(513)}
		}, abi.BlkSIOErr},
		{"discard (not offered)", func() []virtiotest.Buf {
			return []virtiotest.Buf{hdr(abi.BlkTDiscard, 0), d.Writable(1)}
		}, abi.BlkSUnsupp},
		{"unknown type", func() []virtiotest.Buf {
			return []virtiotest.Buf{hdr(0xdead, 0), d.Writable(1)}
		}, abi.BlkSUnsupp},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n, s := r.submit(t, tt.bufs()...)
			if s != tt.status || n != 1 {
				t.Errorf("status %d, used length %d; want %d, 1", s, n, tt.status)
			}
			if !bytes.Equal(r.file(t), pattern(sectors*512)) {
				t.Error("the file changed")
			}
		})
	}
	t.Run("no status byte", func(t *testing.T) {
		n, _ := r.submit(t, d.Readable(append(header(abi.BlkTOut, 0), make([]byte, 512)...)))
		if n != 0 {
			t.Errorf("used length %d, want 0", n)
		}
		if !bytes.Equal(r.file(t), pattern(sectors*512)) {
			t.Error("a request without status changed the file")
		}
	})
	if s := d.Read32(abi.MMIOStatus); s&abi.StatusDeviceNeedsReset != 0 {
		t.Errorf("status 0x%x: bad requests must not break the device", s)
	}
}

func TestConfigValidation(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no id", Config{Path: "/x"}, "drive ID is empty"},
		{"no path", Config{ID: "a"}, "no backing file"},
		{"missing file", Config{ID: "a", Path: filepath.Join(dir, "nope")}, "no such file"},
		{"directory", Config{ID: "a", Path: dir, ReadOnly: true}, "not a regular file"},
		{"directory read-write", Config{ID: "a", Path: dir}, "is a directory"},
	} {
		_, err := New(tt.cfg, discard())
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}

func TestStateRestore(t *testing.T) {
	r := newRig(t, Config{ID: "rootfs", Root: true}, v1)
	st := r.dev.State()
	blob, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var back State
	if err := json.Unmarshal(blob, &back); err != nil {
		t.Fatal(err)
	}
	if back != (State{ID: "rootfs", Root: true, Sectors: sectors}) {
		t.Fatalf("state round trip: got %+v", back)
	}
	d2, err := Restore(Config{ID: "rootfs", Path: r.path, Root: true}, back, discard())
	if err != nil {
		t.Fatal(err)
	}
	d2.Close()
	if _, err := Restore(Config{ID: "rootfs", Path: r.path, ReadOnly: true}, back, discard()); err == nil {
		t.Error("restoring with a changed read-only flag: got nil error")
	}
	small := filepath.Join(t.TempDir(), "small.img")
	if err := os.WriteFile(small, make([]byte, 512), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(Config{ID: "rootfs", Path: small}, back, discard()); err == nil {
		t.Error("restoring onto a smaller file: got nil error")
	}
}

// TestConcurrentNotify notifies from several goroutines at once, as
// several vCPUs may, while requests are being served; the race detector
// checks the locking and every request must complete exactly once.
func TestConcurrentNotify(t *testing.T) {
	r := newRig(t, Config{ID: "d"}, v1)
	d := r.drv
	stop := make(chan struct{})
	done := make(chan struct{})
	for range 3 {
		go func() {
			defer func() { done <- struct{}{} }()
			var b [4]byte
			for {
				select {
				case <-stop:
					return
				default:
					r.mmio.Write(abi.MMIOQueueNotify, b[:])
				}
			}
		}()
	}
	completed := 0
	for i := range 200 {
		st := d.Writable(1)
		head, ok := r.q.Add(d.Readable(header(abi.BlkTIn, uint64(i%sectors))), d.Writable(512), st)
		if !ok {
			t.Fatal("queue full")
		}
		r.q.Kick()
		deadline := time.Now().Add(10 * time.Second)
		for {
			h, n, ok := r.q.Used()
			if ok {
				if h != head || n != 513 || d.Bytes(st.Addr, 1)[0] != abi.BlkSOK {
					t.Fatalf("request %d: used (%d, %d) status %d", i, h, n, d.Bytes(st.Addr, 1)[0])
				}
				completed++
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("request %d not completed", i)
			}
		}
	}
	close(stop)
	for range 3 {
		<-done
	}
	if completed != 200 {
		t.Errorf("completed %d requests, want 200", completed)
	}
}

// TestSetPath switches an active drive to another file: reads then come
// from the new file; a smaller file or a missing one is refused and the
// drive keeps its old file.
func TestSetPath(t *testing.T) {
	r := newRig(t, Config{ID: "rootfs"}, v1)
	d := r.drv
	dir := t.TempDir()
	other := make([]byte, (sectors+1)*512)
	for i := range other {
		other[i] = byte(255 - i%251)
	}
	otherPath, smallPath := filepath.Join(dir, "other.img"), filepath.Join(dir, "small.img")
	if err := os.WriteFile(otherPath, other, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(smallPath, other[:(sectors-1)*512], 0o644); err != nil {
		t.Fatal(err)
	}
	read := func() []byte {
		buf, st := d.Writable(512), d.Writable(1)
		if _, s := r.submit(t, d.Readable(header(abi.BlkTIn, 1)), buf, st); s != abi.BlkSOK {
			t.Fatalf("read: status %d, want 0", s)
		}
		return append([]byte{}, d.Bytes(buf.Addr, 512)...)
	}
	for _, tt := range []struct{ path, want string }{
		{smallPath, "does not resize drives"},
		{filepath.Join(dir, "missing.img"), "no such file"},
	} {
		if err := r.dev.SetPath(tt.path); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("SetPath(%s): got %v, want an error containing %q", tt.path, err, tt.want)
		}
	}
	if got, want := read(), pattern(sectors * 512)[512:1024]; !bytes.Equal(got, want) {
		t.Error("after refused SetPaths: read does not return the original file's bytes")
	}
	if err := r.dev.SetPath(otherPath); err != nil {
		t.Fatal(err)
	}
	if got := r.dev.Config().Path; got != otherPath {
		t.Errorf("Config().Path: got %q, want %q", got, otherPath)
	}
	if got := read(); !bytes.Equal(got, other[512:1024]) {
		t.Error("after SetPath: read does not return the new file's bytes")
	}
	if got := r.dev.State().Sectors; got != sectors {
		t.Errorf("capacity after SetPath to a larger file: got %d sectors, want the guest's %d", got, sectors)
	}
}
