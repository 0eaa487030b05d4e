package virtio

import (
	"testing"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio/virtiotest"
)

// FuzzMMIO lets the fuzzer be the guest: each 8-byte record is one access
// (write flag, size selector, 16-bit offset, 32-bit value) to the transport,
// and the guest RAM the queues live in starts out filled from the input as
// well. Whatever the order, width or value, no access may panic or block,
// and the status register may only ever show bits the spec defines.
func FuzzMMIO(f *testing.F) {
	rec := func(write bool, off uint16, v uint32) []byte {
		w := byte(0)
		if write {
			w = 1
		}
		return []byte{w, 2, byte(off), byte(off >> 8), byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}
	}
	var init []byte
	for _, r := range [][]byte{
		rec(true, abi.MMIOStatus, abi.StatusAcknowledge|abi.StatusDriver),
		rec(true, abi.MMIODriverFeaturesSel, 1),
		rec(true, abi.MMIODriverFeatures, 1),
		rec(true, abi.MMIOStatus, abi.StatusAcknowledge|abi.StatusDriver|abi.StatusFeaturesOK),
		rec(true, abi.MMIOQueueNum, 8),
		rec(true, abi.MMIOQueueDescLow, ramBase),
		rec(true, abi.MMIOQueueDriverLow, ramBase+0x100),
		rec(true, abi.MMIOQueueDeviceLow, ramBase+0x200),
		rec(true, abi.MMIOQueueReady, 1),
		rec(true, abi.MMIOStatus, 0xf),
		rec(true, abi.MMIOQueueNotify, 0),
		rec(false, abi.MMIOInterruptStatus, 0),
	} {
		init = append(init, r...)
	}
	f.Add(init, []byte{})
	f.Fuzz(func(t *testing.T, ops []byte, ram []byte) {
		dev := &echoDev{}
		mem := virtiotest.NewMem(t, ramBase, 0x1000)
		copy(mem.Bytes, ram)
		m := NewMMIO(dev, mem, virtiotest.NewIRQ(), discard())
		defer m.Close()
		for len(ops) >= 8 {
			op := ops[:8]
			ops = ops[8:]
			size := []int{1, 2, 4, 8}[op[1]%4]
			off := uint64(op[2]) | uint64(op[3])<<8
			data := []byte{op[4], op[5], op[6], op[7], 0, 0, 0, 0}[:size]
			if op[0]&1 == 1 {
				m.Write(off, data)
			} else {
				m.Read(off, data)
			}
			var s [4]byte
			m.Read(abi.MMIOStatus, s[:])
			const known = abi.StatusAcknowledge | abi.StatusDriver | abi.StatusFeaturesOK |
				abi.StatusDriverOK | abi.StatusDeviceNeedsReset | abi.StatusFailed
			if st := le.Uint32(s[:]); st&^known != 0 {
				t.Fatalf("status 0x%x has undefined bits", st)
			}
		}
	})
}
