package serial

import (
	"bytes"
	"testing"
)

type countIRQ struct{ n int }

func (c *countIRQ) Trigger() error { c.n++; return nil }

func rd(s *Serial, off uint64) uint8 {
	b := []byte{0xaa}
	s.Read(off, b)
	return b[0]
}

func wr(s *Serial, off uint64, v uint8) { s.Write(off, []byte{v}) }

func TestOutputAndLSR(t *testing.T) {
	var out bytes.Buffer
	s := New(&out, nil)
	if got := rd(s, regLSR); got&lsrTHRE == 0 || got&lsrDR != 0 {
		t.Errorf("LSR of an idle UART: got %#x, want THRE set and DR clear", got)
	}
	for _, c := range []byte("hi\n") {
		wr(s, regData, c)
	}
	if out.String() != "hi\n" {
		t.Errorf("output after a line: got %q, want %q", out.String(), "hi\n")
	}
	wr(s, regData, 'x')
	if out.String() != "hi\n" {
		t.Errorf("partial line flushed early: got %q", out.String())
	}
	if _, err := s.Flush(); err != nil || out.String() != "hi\nx" {
		t.Errorf("after Flush: got %q, %v, want %q", out.String(), err, "hi\nx")
	}
}

func TestDivisorLatch(t *testing.T) {
	var out bytes.Buffer
	s := New(&out, nil)
	wr(s, regLCR, lcrDLAB|0x03)
	wr(s, regData, 0x01) // DLL
	wr(s, regIER, 0x00)  // DLM
	if got := rd(s, regData); got != 0x01 {
		t.Errorf("DLL: got %#x, want 0x01", got)
	}
	wr(s, regLCR, 0x03)
	if out.Len() != 0 {
		t.Errorf("divisor writes reached the output: %q", out.String())
	}
	if got := rd(s, regLCR); got != 0x03 {
		t.Errorf("LCR: got %#x, want 0x03", got)
	}
	wr(s, regSCR, 0x5a)
	if got := rd(s, regSCR); got != 0x5a {
		t.Errorf("SCR: got %#x, want 0x5a", got)
	}
}

func TestInterrupts(t *testing.T) {
	irq := &countIRQ{}
	s := New(nil, irq)
	if got := rd(s, regIIR) & 0x0f; got != iirNone {
		t.Errorf("IIR with interrupts off: got %#x, want %#x", got, iirNone)
	}
	wr(s, regIER, ierTHRE)
	if irq.n != 1 {
		t.Errorf("enabling THRE interrupt: got %d triggers, want 1", irq.n)
	}
	if got := rd(s, regIIR) & 0x0f; got != iirTHRE {
		t.Errorf("IIR after enabling THRE: got %#x, want %#x", got, iirTHRE)
	}
	if got := rd(s, regIIR) & 0x0f; got != iirNone {
		t.Errorf("IIR after acknowledging THRE: got %#x, want %#x", got, iirNone)
	}
	wr(s, regData, 'a')
	if irq.n != 2 {
		t.Errorf("transmit with THRE enabled: got %d triggers, want 2", irq.n)
	}
	wr(s, regIER, ierRDA|ierTHRE)
	s.Enqueue([]byte("xy"))
	if irq.n != 3 {
		t.Errorf("input with RDA enabled: got %d triggers, want 3", irq.n)
	}
	if got := rd(s, regIIR) & 0x0f; got != iirRDA {
		t.Errorf("IIR with input: got %#x, want %#x", got, iirRDA)
	}
	if got := rd(s, regLSR); got&lsrDR == 0 {
		t.Errorf("LSR with input: got %#x, want DR set", got)
	}
	if a, b := rd(s, regData), rd(s, regData); a != 'x' || b != 'y' {
		t.Errorf("received %q%q, want \"xy\"", a, b)
	}
	if got := rd(s, regLSR); got&lsrDR != 0 {
		t.Errorf("LSR after draining: got %#x, want DR clear", got)
	}
}

func TestLoopbackAndState(t *testing.T) {
	var out bytes.Buffer
	s := New(&out, nil)
	wr(s, regMCR, mcrLoop)
	wr(s, regData, 'q')
	if out.Len() != 0 {
		t.Errorf("loopback byte reached the output")
	}
	st := s.State()
	s2 := New(nil, nil)
	s2.SetState(st)
	if got := rd(s2, regData); got != 'q' {
		t.Errorf("byte looped back and carried over by State: got %q, want 'q'", got)
	}
	s.Enqueue(make([]byte, 2*maxInput))
	if n := len(s.State().Input); n != maxInput {
		t.Errorf("input buffer after a flood: got %d bytes, want the %d cap", n, maxInput)
	}
}
