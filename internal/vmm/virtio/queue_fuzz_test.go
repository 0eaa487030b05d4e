package virtio

import (
	"testing"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio/virtiotest"
)

// FuzzChainWalk lets the fuzzer write the descriptor table, the available
// ring and the rest of a small guest RAM, then pops chains until the queue
// is empty or reports an error. It must never panic, loop, or return a
// buffer outside RAM, and no chain may be longer than its table allows.
func FuzzChainWalk(f *testing.F) {
	const size = 8
	seed := make([]byte, 512)
	// desc 0 -> 1, readable then writable, published once.
	le.PutUint64(seed[0:], ramBase+0x200)
	le.PutUint32(seed[8:], 16)
	le.PutUint16(seed[12:], abi.DescFNext)
	le.PutUint16(seed[14:], 1)
	le.PutUint64(seed[16:], ramBase+0x210)
	le.PutUint32(seed[24:], 16)
	le.PutUint16(seed[28:], abi.DescFWrite)
	le.PutUint16(seed[0x80+2:], 1)
	f.Add(seed, true, false)
	loop := append([]byte(nil), seed...)
	le.PutUint16(loop[14:], 0)
	le.PutUint16(loop[28:], abi.DescFNext)
	f.Add(loop, false, true)
	f.Fuzz(func(t *testing.T, ram []byte, indirect, eventIdx bool) {
		mem := virtiotest.NewMem(t, ramBase, 4096)
		copy(mem.Bytes, ram)
		q := &Queue{mem: mem, size: size, desc: ramBase, avail: ramBase + 0x80, used: ramBase + 0xc0,
			indirect: indirect, eventIdx: eventIdx, signal: func(*Queue) {}}
		for range 2 * size {
			c, err := q.Pop()
			if err != nil || c == nil {
				return
			}
			limit := size
			if indirect {
				limit = abi.MaxQueueSize
			}
			if len(c.Buffers) == 0 || len(c.Buffers) > limit {
				t.Fatalf("chain %d has %d buffers", c.Head, len(c.Buffers))
			}
			writing := false
			for _, b := range c.Buffers {
				if b.Len == 0 {
					t.Fatalf("zero-length buffer in chain %d", c.Head)
				}
				if _, err := mem.Slice(b.Addr, uint64(b.Len)); err != nil {
					t.Fatalf("chain %d buffer outside RAM: %v", c.Head, err)
				}
				if writing && !b.Write {
					t.Fatalf("chain %d: readable buffer after writable", c.Head)
				}
				writing = b.Write
			}
			if err := q.Push(c.Head, uint32(c.Writable())); err != nil {
				t.Fatalf("push: %v", err)
			}
			q.Interrupt()
		}
	})
}
