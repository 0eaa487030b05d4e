package virtio

import (
	"testing"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
	"github.com/thawvm/thaw/internal/vmm/memory"
)

// The VMM's guest memory is what devices get in production.
var _ Memory = (*memory.Memory)(nil)

// TestQueueOverVMMMemory walks and completes a chain laid out in the VMM's
// own guest memory type, including a buffer that runs into the end of RAM.
func TestQueueOverVMMMemory(t *testing.T) {
	mem, err := memory.New(1<<20, memory.Backing{})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	const desc, avail, used, data = 0x1000, 0x2000, 0x3000, 0x4000
	put := func(gpa uint64, b []byte) {
		if err := mem.Write(gpa, b); err != nil {
			t.Fatal(err)
		}
	}
	d := make([]byte, 2*abi.DescSize)
	le.PutUint64(d[0:], data)
	le.PutUint32(d[8:], 5)
	le.PutUint16(d[12:], abi.DescFNext)
	le.PutUint16(d[14:], 1)
	le.PutUint64(d[16:], data+0x100)
	le.PutUint32(d[24:], 5)
	le.PutUint16(d[28:], abi.DescFWrite)
	put(desc, d)
	put(data, []byte("hello"))
	put(avail+abi.AvailOffIdx, []byte{1, 0})
	q := &Queue{mem: mem, size: 4, desc: desc, avail: avail, used: used, signal: func(*Queue) {}}
	c, err := q.Pop()
	if err != nil || c == nil {
		t.Fatalf("Pop: %v, %v", c, err)
	}
	b := make([]byte, 5)
	if err := c.ReadAt(b, 0); err != nil || string(b) != "hello" {
		t.Fatalf("ReadAt: %q, %v", b, err)
	}
	if err := c.WriteAt([]byte("world"), 0); err != nil {
		t.Fatal(err)
	}
	if err := q.Push(c.Head, 5); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	mem.Read(data+0x100, got)
	if idx, _ := mem.Slice(used+abi.UsedOffIdx, 2); string(got) != "world" || le.Uint16(idx) != 1 {
		t.Fatalf("after Push: buffer %q, used idx %d", got, le.Uint16(idx))
	}
	// A buffer crossing the end of RAM is refused.
	le.PutUint64(d[0:], 1<<20-2)
	le.PutUint16(d[12:], 0)
	put(desc, d[:abi.DescSize])
	put(avail+abi.AvailOffRing+2, []byte{0, 0})
	put(avail+abi.AvailOffIdx, []byte{2, 0})
	if _, err := q.Pop(); err == nil {
		t.Error("chain with a buffer past the end of RAM: got nil error")
	}
}
