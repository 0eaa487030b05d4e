package vmstate

import (
	"bytes"
	"testing"
)

// FuzzDecode feeds arbitrary bytes, and arbitrary JSON payloads in a valid
// envelope, to Decode: it must never panic, and whatever it accepts must be
// valid and encode back to an equivalent file.
func FuzzDecode(f *testing.F) {
	good, err := Encode(sample())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, false)
	f.Add(good[:HeaderSize+10], false)
	f.Add([]byte(`{"machine":{"vcpu_count":1,"mem_size_mib":1},"memory":[{"guest_phys_addr":0,"size":1048576,"file_offset":0}]}`), true)
	f.Add(good[HeaderSize:], true)
	f.Fuzz(func(t *testing.T, b []byte, seal bool) {
		if seal {
			b = Seal(b)
		}
		s, err := Decode(b, 1<<20)
		if err != nil {
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("Decode accepted an invalid state: %v", err)
		}
		again, err := Encode(s)
		if err != nil {
			t.Fatalf("re-encoding an accepted state: %v", err)
		}
		s2, err := Decode(again, 1<<20)
		if err != nil {
			t.Fatalf("decoding a re-encoded state: %v", err)
		}
		again2, err := Encode(s2)
		if err != nil || !bytes.Equal(again, again2) {
			t.Fatalf("encoding is not stable across a round trip (err %v)", err)
		}
	})
}
