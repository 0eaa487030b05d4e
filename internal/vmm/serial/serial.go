// Package serial emulates the 8250/16550 UART of a PC's COM1 well enough
// for Linux's 8250 driver and for polling guests: transmit to an
// io.Writer, receive from Enqueue, the divisor latch, scratch and modem
// registers, and the receive-data and transmit-empty interrupts.
package serial

import (
	"bufio"
	"io"
	"sync"
)

// Register offsets from the port base (COM1 is 0x3f8), and bits, from the
// 16550 data sheet.
const (
	regData = 0 // RBR on read, THR on write; DLL with DLAB
	regIER  = 1 // DLM with DLAB
	regIIR  = 2 // FCR on write
	regLCR  = 3
	regMCR  = 4
	regLSR  = 5
	regMSR  = 6
	regSCR  = 7

	ierRDA  = 0x01 // interrupt when data is available
	ierTHRE = 0x02 // interrupt when the transmitter is empty

	iirNone = 0x01
	iirTHRE = 0x02
	iirRDA  = 0x04
	iirFIFO = 0xc0

	lcrDLAB = 0x80
	mcrLoop = 0x10

	lsrDR   = 0x01
	lsrTHRE = 0x20
	lsrTEMT = 0x40

	msrCTS = 0x10
	msrDSR = 0x20
	msrDCD = 0x80

	// maxInput bounds buffered guest input.
	maxInput = 64 << 10
)

// Size is the width of the UART's port window.
const Size = 8

// Interrupt raises the UART's interrupt line (an edge).
type Interrupt interface {
	Trigger() error
}

// State is the UART's register state, plain data for snapshots.
type State struct {
	IER, LCR, MCR, SCR, DLL, DLM, FCR uint8
	THREPending                       bool
	Input                             []byte
}

// Serial is one UART. It is safe for concurrent use by vCPU threads.
type Serial struct {
	irq Interrupt

	mu sync.Mutex
	// The fields below are guarded by mu.
	out   *bufio.Writer
	st    State
	werrs int
}

// New returns a UART writing guest output to out (nil discards it) and
// raising irq (nil for none).
func New(out io.Writer, irq Interrupt) *Serial {
	if out == nil {
		out = io.Discard
	}
	return &Serial{out: bufio.NewWriterSize(out, 4096), irq: irq, st: State{DLL: 12}} // 9600 baud
}

// Read answers a guest read of the register at offset.
func (s *Serial) Read(offset uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	for i := range data {
		data[i] = 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &s.st
	var v uint8
	switch offset {
	case regData:
		if st.LCR&lcrDLAB != 0 {
			v = st.DLL
		} else if len(st.Input) > 0 {
			v = st.Input[0]
			st.Input = st.Input[1:]
		}
	case regIER:
		if st.LCR&lcrDLAB != 0 {
			v = st.DLM
		} else {
			v = st.IER
		}
	case regIIR:
		v = s.iirLocked() | iirFIFO
		if v&0x0f == iirTHRE {
			// Reading IIR acknowledges a transmitter-empty interrupt.
			st.THREPending = false
		}
	case regLCR:
		v = st.LCR
	case regMCR:
		v = st.MCR
	case regLSR:
		v = lsrTHRE | lsrTEMT
		if len(st.Input) > 0 {
			v |= lsrDR
		}
	case regMSR:
		if st.MCR&mcrLoop != 0 {
			// Loopback wires MCR's outputs back to the modem inputs.
			v = (st.MCR & 0x0f) << 4
		} else {
			v = msrDCD | msrDSR | msrCTS
		}
	case regSCR:
		v = st.SCR
	}
	data[0] = v
}

// iirLocked returns the highest-priority pending interrupt.
func (s *Serial) iirLocked() uint8 {
	switch {
	case s.st.IER&ierRDA != 0 && len(s.st.Input) > 0:
		return iirRDA
	case s.st.IER&ierTHRE != 0 && s.st.THREPending:
		return iirTHRE
	}
	return iirNone
}

// Write answers a guest write of the register at offset.
func (s *Serial) Write(offset uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	v := data[0]
	s.mu.Lock()
	st := &s.st
	raise := false
	switch offset {
	case regData:
		if st.LCR&lcrDLAB != 0 {
			st.DLL = v
			break
		}
		if st.MCR&mcrLoop != 0 {
			s.enqueueLocked([]byte{v})
			raise = st.IER&ierRDA != 0
			break
		}
		s.emitLocked(v)
		st.THREPending = true
		raise = st.IER&ierTHRE != 0
	case regIER:
		if st.LCR&lcrDLAB != 0 {
			st.DLM = v
			break
		}
		old := st.IER
		st.IER = v & 0x0f
		// Enabling the transmit-empty interrupt while the transmitter is
		// empty raises it at once, as on the real chip.
		if old&ierTHRE == 0 && st.IER&ierTHRE != 0 {
			st.THREPending = true
			raise = true
		}
		if st.IER&ierRDA != 0 && len(st.Input) > 0 {
			raise = true
		}
	case regIIR:
		st.FCR = v
	case regLCR:
		st.LCR = v
	case regMCR:
		st.MCR = v
	case regSCR:
		st.SCR = v
	}
	s.mu.Unlock()
	if raise && s.irq != nil {
		s.irq.Trigger() // an edge lost to a closing VM is harmless
	}
}

// emitLocked writes one byte of guest output, flushing at line ends so
// output shows up promptly without a syscall per byte. Write errors are
// counted, not fatal: a full disk must not stop the guest.
func (s *Serial) emitLocked(b byte) {
	if err := s.out.WriteByte(b); err != nil {
		s.werrs++
		return
	}
	if b == '\n' {
		if err := s.out.Flush(); err != nil {
			s.werrs++
		}
	}
}

func (s *Serial) enqueueLocked(b []byte) {
	room := maxInput - len(s.st.Input)
	if len(b) > room {
		b = b[:room]
	}
	s.st.Input = append(s.st.Input, b...)
}

// Enqueue queues input for the guest to read, dropping what exceeds the
// buffer, and raises the receive interrupt if the guest enabled it.
func (s *Serial) Enqueue(b []byte) {
	s.mu.Lock()
	s.enqueueLocked(b)
	raise := s.st.IER&ierRDA != 0 && len(s.st.Input) > 0
	s.mu.Unlock()
	if raise && s.irq != nil {
		s.irq.Trigger()
	}
}

// Flush writes buffered output and reports how many output writes failed
// so far, if any.
func (s *Serial) Flush() (writeErrors int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.werrs, s.out.Flush()
}

// State returns a copy of the register state.
func (s *Serial) State() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	st.Input = append([]byte(nil), s.st.Input...)
	return st
}

// SetState restores register state saved by State.
func (s *Serial) SetState(st State) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st = st
	s.st.Input = append([]byte(nil), st.Input...)
	if len(s.st.Input) > maxInput {
		s.st.Input = s.st.Input[:maxInput]
	}
}
