package wire

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func TestPattern(t *testing.T) {
	a, b := Pattern(7, 1000), Pattern(7, 1000)
	if !bytes.Equal(a, b) {
		t.Fatal("Pattern(7, 1000) differs between calls")
	}
	if c := Pattern(8, 1000); bytes.Equal(a, c) {
		t.Error("Pattern(7) and Pattern(8) are equal: the seed must matter")
	}
	if got := Pattern(7, 13); !bytes.Equal(got, a[:13]) {
		t.Errorf("Pattern(7, 13): got %x, want the first 13 bytes of Pattern(7, 1000) %x", got, a[:13])
	}
	if zeros := bytes.Count(a, []byte{0}); zeros > 50 {
		t.Errorf("Pattern(7, 1000) has %d zero bytes: not a pattern that catches lost data", zeros)
	}
}

func TestFrames(t *testing.T) {
	for _, n := range []int{0, 1, 4096, PayloadSize} {
		var buf bytes.Buffer
		in := Pattern(uint64(n), n)
		if err := WriteFrame(&buf, in); err != nil {
			t.Fatal(err)
		}
		out, err := ReadFrame(&buf)
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if !bytes.Equal(in, out) {
			t.Errorf("%d bytes: got a different frame back", n)
		}
	}
}

func TestReadFrameErrors(t *testing.T) {
	big := binary.BigEndian.AppendUint64(nil, MaxFrame+1)
	short := append(binary.BigEndian.AppendUint64(nil, 10), 1, 2, 3)
	for name, in := range map[string][]byte{"empty": nil, "short header": {0, 0, 1}, "too big": big, "truncated": short} {
		if _, err := ReadFrame(bytes.NewReader(in)); err == nil {
			t.Errorf("%s: got no error, want one", name)
		}
	}
}

func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 2, 'h', 'i'})
	f.Fuzz(func(t *testing.T, in []byte) {
		b, err := ReadFrame(bytes.NewReader(in))
		if err == nil && len(b) != int(binary.BigEndian.Uint64(in)) {
			t.Errorf("got %d bytes, header says %d", len(b), binary.BigEndian.Uint64(in))
		}
	})
}
