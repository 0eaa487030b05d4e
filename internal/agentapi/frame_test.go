package agentapi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	big := bytes.Repeat([]byte{0, 1, 2, 0xff}, MaxFramePayload/4+100) // splits into two frames
	tests := []struct {
		typ     FrameType
		payload []byte
		frames  int
	}{
		{FrameStdin, []byte("hello"), 1},
		{FrameStdinClose, nil, 1},
		{FrameStdout, big, 2},
		{FrameExit, []byte(`{"code":3}`), 1},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		if err := NewFrameWriter(&buf).WriteFrame(tt.typ, tt.payload); err != nil {
			t.Fatalf("WriteFrame(%s): %v", tt.typ, err)
		}
		var got []byte
		frames := 0
		for {
			typ, p, err := ReadFrame(&buf, nil)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("ReadFrame: %v", err)
			}
			if typ != tt.typ {
				t.Errorf("got type %s, want %s", typ, tt.typ)
			}
			got = append(got, p...)
			frames++
		}
		if frames != tt.frames {
			t.Errorf("%s: got %d frames, want %d", tt.typ, frames, tt.frames)
		}
		if !bytes.Equal(got, tt.payload) {
			t.Errorf("%s: payload of %d bytes came back as %d bytes or changed", tt.typ, len(tt.payload), len(got))
		}
	}
}

func TestReadFrameRejects(t *testing.T) {
	hdr := func(typ byte, n uint32) []byte {
		b := []byte{typ, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(b[1:], n)
		return b
	}
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"unknown type", hdr(99, 0), "unknown frame type 99"},
		{"type zero", hdr(0, 0), "unknown frame type 0"},
		{"oversized", hdr(byte(FrameStdout), MaxFramePayload+1), "exceeds"},
		{"cut payload", append(hdr(byte(FrameStdout), 10), "abc"...), "unexpected EOF"},
		{"cut header", []byte{4, 0}, "unexpected EOF"},
	}
	for _, tt := range tests {
		_, _, err := ReadFrame(bytes.NewReader(tt.in), nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got error %v, want one containing %q", tt.name, err, tt.want)
		}
	}
	if _, _, err := ReadFrame(bytes.NewReader(nil), nil); !errors.Is(err, io.EOF) {
		t.Errorf("empty stream: got %v, want io.EOF", err)
	}
}

// FuzzReadFrame feeds arbitrary bytes (what a broken or hostile peer sends)
// to the frame reader: it must never panic, never return a payload over the
// cap, and what it accepts must re-encode to the same bytes.
func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{1, 0, 0, 0, 3, 'a', 'b', 'c'})
	f.Add([]byte{6, 0, 0, 0, 2, '{', '}'})
	f.Add([]byte{9, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		var out bytes.Buffer
		fw := NewFrameWriter(&out)
		for {
			typ, p, err := ReadFrame(r, nil)
			if err != nil {
				break
			}
			if len(p) > MaxFramePayload {
				t.Fatalf("payload of %d bytes exceeds the cap", len(p))
			}
			if err := fw.WriteFrame(typ, p); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.HasPrefix(in, out.Bytes()) {
			t.Fatalf("re-encoding accepted frames gave %x, not a prefix of the input %x", out.Bytes(), in)
		}
	})
}
