package bus

import (
	"bytes"
	"strings"
	"testing"
)

type rec struct {
	name string
	log  *[]string
}

func (r rec) Read(off uint64, data []byte) {
	*r.log = append(*r.log, r.name+" read")
	for i := range data {
		data[i] = byte(off) + byte(i)
	}
}

func (r rec) Write(off uint64, data []byte) { *r.log = append(*r.log, r.name+" write") }

func TestDispatch(t *testing.T) {
	var log []string
	var b Bus
	for _, w := range []struct {
		name       string
		base, size uint64
	}{{"b", 0x2000, 0x1000}, {"a", 0x1000, 0x1000}, {"c", 0x4000, 8}} {
		if err := b.Add(w.name, w.base, w.size, rec{w.name, &log}); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		addr    uint64
		n       int
		ok      bool
		device  string
		wantDat []byte
	}{
		{0x1000, 4, true, "a", []byte{0, 1, 2, 3}},
		{0x1ffc, 4, true, "a", []byte{0xfc, 0xfd, 0xfe, 0xff}},
		{0x1ffe, 4, false, "", []byte{0xff, 0xff, 0xff, 0xff}}, // straddles a and b
		{0x2000, 1, true, "b", []byte{0}},
		{0x3000, 1, false, "", []byte{0xff}},
		{0x4004, 4, true, "c", []byte{4, 5, 6, 7}},
		{0x4005, 4, false, "", []byte{0xff, 0xff, 0xff, 0xff}},
		{0xfff, 1, false, "", []byte{0xff}},
		{^uint64(0), 8, false, "", bytes.Repeat([]byte{0xff}, 8)},
	}
	for _, tt := range tests {
		log = nil
		data := make([]byte, tt.n)
		ok := b.Read(tt.addr, data)
		if ok != tt.ok || !bytes.Equal(data, tt.wantDat) {
			t.Errorf("Read(%#x, %d): got ok=%v data=%x, want ok=%v data=%x", tt.addr, tt.n, ok, data, tt.ok, tt.wantDat)
		}
		if tt.ok && (len(log) != 1 || log[0] != tt.device+" read") {
			t.Errorf("Read(%#x): device log %q, want one read by %s", tt.addr, log, tt.device)
		}
		log = nil
		if ok := b.Write(tt.addr, data); ok != tt.ok || (!tt.ok && len(log) != 0) {
			t.Errorf("Write(%#x, %d): got ok=%v log=%q, want ok=%v", tt.addr, tt.n, ok, log, tt.ok)
		}
	}
}

func TestAddRejectsOverlap(t *testing.T) {
	var b Bus
	var log []string
	if err := b.Add("serial", 0x3f8, 8, rec{"serial", &log}); err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct{ base, size uint64 }{{0x3f0, 9}, {0x3ff, 1}, {0x3f8, 8}, {0x3fa, 2}} {
		if err := b.Add("other", w.base, w.size, rec{"other", &log}); err == nil || !strings.Contains(err.Error(), "serial") {
			t.Errorf("Add at [%#x, +%d): got %v, want an overlap error naming serial", w.base, w.size, err)
		}
	}
	if err := b.Add("empty", 0x100, 0, rec{"empty", &log}); err == nil {
		t.Errorf("Add of an empty window: got nil error")
	}
	if err := b.Add("next", 0x400, 8, rec{"next", &log}); err != nil {
		t.Errorf("Add of an adjacent window: %v", err)
	}
}
