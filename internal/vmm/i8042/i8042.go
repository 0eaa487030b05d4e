// Package i8042 emulates the PC keyboard controller far enough for what a
// microVM uses it for: the guest resets the machine by pulsing the CPU
// reset line (command 0xFE), which the VMM turns into a clean exit, and the
// host sends Ctrl+Alt+Del as keyboard scancodes, which a Linux guest turns
// into a reboot. It answers the controller and keyboard commands Linux's
// i8042 and atkbd drivers send while probing.
package i8042

import "sync"

// The controller's window starts at port 0x60 (data) and is 5 ports wide;
// 0x64 (offset 4) is status on read and command on write. Port 0x61 in the
// middle belongs to the PIT's speaker gate, which KVM's in-kernel PIT
// handles before an access could reach here.
const (
	Base = 0x60
	Size = 5

	offData    = 0
	offCommand = 4

	cmdReadCTR    = 0x20
	cmdWriteCTR   = 0x60
	cmdDisableAux = 0xa7
	cmdEnableAux  = 0xa8
	cmdTestAux    = 0xa9
	cmdSelfTest   = 0xaa
	cmdTestKbd    = 0xab
	cmdDisableKbd = 0xad
	cmdEnableKbd  = 0xae
	cmdReadOutP   = 0xd0
	cmdWriteOutP  = 0xd1
	cmdWriteAux   = 0xd4
	cmdResetCPU   = 0xfe

	statusOBF  = 0x01 // output buffer full: data to read at 0x60
	statusSys  = 0x04 // system flag: self test passed
	statusCmd  = 0x08 // last write was a command
	ctrKbdInt  = 0x01 // CTR: interrupt on keyboard data
	kbdACK     = 0xfa
	kbdReset   = 0xff
	kbdGetID   = 0xf2
	kbdEcho    = 0xee
	selfTestOK = 0x55

	maxBuf = 16
)

// CtrlAltDel is the scancode sequence SendCtrlAltDel queues: Ctrl, Alt and
// Delete presses in scancode set 2, as Firecracker sends them.
var CtrlAltDel = []byte{0x14, 0x11, 0xe0, 0x71}

// Interrupt raises the keyboard interrupt (IRQ 1), an edge.
type Interrupt interface {
	Trigger() error
}

// State is the controller's state, plain data for snapshots.
type State struct {
	Status, CTR, Pending, OutP uint8
	Buf                        []byte
}

// Device is the keyboard controller. It is safe for concurrent use.
type Device struct {
	irq   Interrupt
	reset func()

	mu sync.Mutex
	st State // guarded by mu
}

// New returns a controller that calls reset when the guest pulses the CPU
// reset line and raises irq when it has data for the guest.
func New(irq Interrupt, reset func()) *Device {
	return &Device{irq: irq, reset: reset, st: State{Status: statusSys, CTR: ctrKbdInt}}
}

// Read answers a guest read at offset.
func (d *Device) Read(offset uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	clear(data)
	d.mu.Lock()
	defer d.mu.Unlock()
	switch offset {
	case offData:
		if len(d.st.Buf) > 0 {
			data[0] = d.st.Buf[0]
			d.st.Buf = d.st.Buf[1:]
		}
		if len(d.st.Buf) == 0 {
			d.st.Status &^= statusOBF
		}
	case offCommand:
		data[0] = d.st.Status
	}
}

// Write answers a guest write at offset.
func (d *Device) Write(offset uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	v := data[0]
	d.mu.Lock()
	raise, reset := false, false
	switch offset {
	case offCommand:
		d.st.Status |= statusCmd
		switch v {
		case cmdReadCTR:
			raise = d.pushLocked(d.st.CTR)
		case cmdWriteCTR, cmdWriteOutP, cmdWriteAux:
			d.st.Pending = v
		case cmdReadOutP:
			raise = d.pushLocked(d.st.OutP)
		case cmdSelfTest:
			raise = d.pushLocked(selfTestOK)
		case cmdTestKbd, cmdTestAux:
			raise = d.pushLocked(0x00)
		case cmdResetCPU:
			reset = true
		case cmdDisableAux, cmdEnableAux, cmdDisableKbd, cmdEnableKbd:
		}
	case offData:
		d.st.Status &^= statusCmd
		switch d.st.Pending {
		case cmdWriteCTR:
			d.st.CTR = v
		case cmdWriteOutP:
			d.st.OutP = v
		case cmdWriteAux:
			// No mouse: the byte goes nowhere.
		default:
			raise = d.keyboardCommandLocked(v)
		}
		d.st.Pending = 0
	}
	d.mu.Unlock()
	if raise && d.irq != nil {
		d.irq.Trigger()
	}
	if reset && d.reset != nil {
		d.reset()
	}
}

// keyboardCommandLocked answers a byte sent to the keyboard itself.
func (d *Device) keyboardCommandLocked(v uint8) bool {
	switch v {
	case kbdReset:
		return d.pushLocked(kbdACK, 0xaa)
	case kbdGetID:
		return d.pushLocked(kbdACK, 0xab, 0x83)
	case kbdEcho:
		return d.pushLocked(kbdEcho)
	default:
		return d.pushLocked(kbdACK)
	}
}

// pushLocked queues bytes for the guest and reports whether to interrupt.
func (d *Device) pushLocked(b ...byte) bool {
	room := maxBuf - len(d.st.Buf)
	if len(b) > room {
		b = b[:room]
	}
	if len(b) == 0 {
		return false
	}
	d.st.Buf = append(d.st.Buf, b...)
	d.st.Status |= statusOBF
	return d.st.CTR&ctrKbdInt != 0
}

// SendCtrlAltDel queues the Ctrl+Alt+Del scancodes and raises the keyboard
// interrupt.
func (d *Device) SendCtrlAltDel() error {
	d.mu.Lock()
	d.pushLocked(CtrlAltDel...)
	d.mu.Unlock()
	if d.irq == nil {
		return nil
	}
	// Raise even with the CTR's interrupt bit off: a polling guest never
	// looks at the line, and one that masked it will not see the edge.
	return d.irq.Trigger()
}

// State returns a copy of the controller's state.
func (d *Device) State() State {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.st
	st.Buf = append([]byte(nil), d.st.Buf...)
	return st
}

// SetState restores state saved by State.
func (d *Device) SetState(st State) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.st = st
	d.st.Buf = append([]byte(nil), st.Buf...)
	if len(d.st.Buf) > maxBuf {
		d.st.Buf = d.st.Buf[:maxBuf]
	}
}
