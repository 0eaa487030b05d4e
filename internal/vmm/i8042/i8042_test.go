package i8042

import (
	"bytes"
	"testing"
)

type countIRQ struct{ n int }

func (c *countIRQ) Trigger() error { c.n++; return nil }

func rd(d *Device, off uint64) uint8 {
	b := []byte{0xaa}
	d.Read(off, b)
	return b[0]
}

func wr(d *Device, off uint64, v uint8) { d.Write(off, []byte{v}) }

func drain(d *Device) []byte {
	var out []byte
	for rd(d, offCommand)&statusOBF != 0 {
		out = append(out, rd(d, offData))
	}
	return out
}

func TestReset(t *testing.T) {
	resets := 0
	d := New(nil, func() { resets++ })
	wr(d, offCommand, cmdReadCTR)
	if resets != 0 {
		t.Fatalf("reset called for command 0x20")
	}
	wr(d, offCommand, cmdResetCPU)
	if resets != 1 {
		t.Errorf("command 0xfe: got %d resets, want 1", resets)
	}
}

func TestCommands(t *testing.T) {
	tests := []struct {
		name  string
		cmd   []uint8 // command port writes
		data  []uint8 // then data port writes
		wantO []byte
	}{
		{"read CTR", []uint8{cmdReadCTR}, nil, []byte{ctrKbdInt}},
		{"self test", []uint8{cmdSelfTest}, nil, []byte{selfTestOK}},
		{"keyboard test", []uint8{cmdTestKbd}, nil, []byte{0}},
		{"keyboard reset", nil, []uint8{kbdReset}, []byte{kbdACK, 0xaa}},
		{"keyboard id", nil, []uint8{kbdGetID}, []byte{kbdACK, 0xab, 0x83}},
		{"keyboard echo", nil, []uint8{kbdEcho}, []byte{kbdEcho}},
		{"keyboard set leds", nil, []uint8{0xed}, []byte{kbdACK}},
		{"write then read CTR", []uint8{cmdWriteCTR}, []uint8{0x47}, nil},
	}
	for _, tt := range tests {
		d := New(nil, nil)
		for _, c := range tt.cmd {
			wr(d, offCommand, c)
		}
		for _, v := range tt.data {
			wr(d, offData, v)
		}
		if got := drain(d); !bytes.Equal(got, tt.wantO) {
			t.Errorf("%s: guest read %x, want %x", tt.name, got, tt.wantO)
		}
	}
	d := New(nil, nil)
	wr(d, offCommand, cmdWriteCTR)
	wr(d, offData, 0x47)
	wr(d, offCommand, cmdReadCTR)
	if got := drain(d); !bytes.Equal(got, []byte{0x47}) {
		t.Errorf("CTR after writing 0x47: got %x", got)
	}
}

func TestCtrlAltDel(t *testing.T) {
	irq := &countIRQ{}
	d := New(irq, nil)
	if err := d.SendCtrlAltDel(); err != nil {
		t.Fatal(err)
	}
	if irq.n != 1 {
		t.Errorf("SendCtrlAltDel: got %d interrupts, want 1", irq.n)
	}
	st := d.State()
	if got := drain(d); !bytes.Equal(got, CtrlAltDel) {
		t.Errorf("scancodes: got %x, want %x", got, CtrlAltDel)
	}
	d2 := New(nil, nil)
	d2.SetState(st)
	if got := drain(d2); !bytes.Equal(got, CtrlAltDel) {
		t.Errorf("scancodes carried by State: got %x, want %x", got, CtrlAltDel)
	}
	for range 10 {
		d.SendCtrlAltDel()
	}
	if got := drain(d); len(got) != maxBuf {
		t.Errorf("buffer after a flood: got %d bytes, want the %d cap", len(got), maxBuf)
	}
}
