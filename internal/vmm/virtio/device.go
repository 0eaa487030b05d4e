// Package virtio implements the VMM's virtio devices' common half: the
// virtio-mmio transport (version 2, spec 4.2) and split virtqueues (spec
// 2.7). Device models (internal/vmm/virtio/blk, internal/vmm/virtio/vsock)
// implement Device; the VMM wraps each one in an MMIO transport and puts that
// on its MMIO bus.
//
// How the VMM uses it:
//
//   - Construct the device (blk.New, vsock.New), then NewMMIO(dev, mem, irq,
//     log). Place the transport in a 4 KiB window (abi/virtio.MMIOWindowSize)
//     and announce it on the kernel command line as
//     virtio_mmio.device=4K@<addr>:<gsi>.
//   - Call MMIO.Read and MMIO.Write from vCPU threads with the offset inside
//     the window; they are safe for concurrent use and never block on the
//     guest. A guest that misprograms the device gets DEVICE_NEEDS_RESET or an
//     error status and a log line; it never makes these calls fail or panic.
//   - Interrupt.Trigger is called from vCPU threads (for queue work done
//     inline, as blk does) and from device goroutines (vsock).
//   - The VMM calls MMIO.Close once, after its vCPUs have stopped; Close stops
//     every goroutine the device started and releases its host resources
//     (files, sockets). Nothing must call Read or Write after Close.
//   - Snapshots: pause the vCPUs, call MMIO.Pause (devices with their own
//     goroutines stop touching guest memory), save MMIO.State and the
//     device's State, then MMIO.Resume if the VM carries on. RestoreMMIO
//     rebuilds a transport (and re-activates its device) from a State.
//
// Guest memory is only reached through Memory.Slice and read or written with
// encoding/binary at the spec's offsets (abi/virtio); no Go struct is ever
// overlaid on guest memory.
package virtio

import "errors"

// Memory is guest RAM as the devices see it.
type Memory interface {
	// Slice returns guest RAM [gpa, gpa+n) as a slice aliasing guest memory,
	// or an error if any byte lies outside RAM. The VMM's memory may first
	// wait, inside a system call, for a page server to bring the pages in
	// (memory.Backing.Userfault), so that touching the slice never faults:
	// devices reach guest bytes only through slices Slice returned.
	Slice(gpa, n uint64) ([]byte, error)
}

// Interrupt is the device's interrupt line.
type Interrupt interface {
	// Trigger raises the device's (edge-triggered) interrupt, e.g. by writing its irqfd.
	Trigger() error
}

// Device is a virtio device model behind a transport. The transport owns
// the register state and the queues' configuration; the device owns what
// the queues carry.
type Device interface {
	// DeviceID returns the virtio device type (spec 5, abi/virtio.ID*).
	DeviceID() uint32
	// Features returns the feature bits the device offers. The transport
	// adds VIRTIO_F_VERSION_1 and removes ring features it does not
	// implement.
	Features() uint64
	// QueueMaxSizes returns, per queue, the largest size the device accepts;
	// its length is the number of queues.
	QueueMaxSizes() []uint16
	// ReadConfig fills data from the device configuration space at offset;
	// bytes outside it read as zero.
	ReadConfig(offset uint64, data []byte)
	// WriteConfig writes the device configuration space; read-only fields
	// ignore writes.
	WriteConfig(offset uint64, data []byte)
	// Activate starts the device after the driver set DRIVER_OK. It is
	// called with the transport's lock held and must not block on the
	// guest.
	Activate(a Activation) error
	// Notify tells the device the driver made buffers available in queue
	// i (an index Activate received a non-nil queue for). It is called on a
	// vCPU thread, possibly concurrently with itself.
	Notify(i int)
	// Reset returns an activated device to its pre-activation state. When it
	// returns, the device no longer touches its queues or guest memory.
	Reset()
	// Close releases the device's host resources and stops its goroutines.
	Close() error
}

// Pauser is implemented by devices that touch guest memory outside vCPU
// threads (vsock's event loop). MMIO.Pause and MMIO.Resume call it.
type Pauser interface {
	// Pause stops all device activity on guest memory and the queues.
	Pause()
	// Resume undoes Pause.
	Resume()
}

// Activation is what a device gets when the driver finishes initialisation.
type Activation struct {
	// Features are the negotiated feature bits.
	Features uint64
	// Queues holds one entry per queue the device declared; nil when the
	// driver did not enable that queue.
	Queues []*Queue
	// Mem is guest memory.
	Mem Memory
	// NeedsReset marks the device broken: the transport sets
	// DEVICE_NEEDS_RESET and sends a configuration change interrupt (spec
	// 2.1.2). The device should stop processing until Reset. Safe to call
	// from any goroutine.
	NeedsReset func(error)
}

// ErrMalformed is wrapped by every error that reports guest-supplied
// virtqueue contents the device cannot accept.
var ErrMalformed = errors.New("malformed virtqueue")
