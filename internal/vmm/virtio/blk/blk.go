package blk

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio"
)

// QueueSize is the size of the device's single request queue, Firecracker's.
const QueueSize = 256

// segMax is the number of data buffers per request the device announces
// (VIRTIO_BLK_F_SEG_MAX): a full queue minus the header and status buffers.
const segMax = QueueSize - 2

var le = binary.LittleEndian

// Device is a virtio-blk device backed by a file.
type Device struct {
	cfg     Config
	log     *slog.Logger
	file    *os.File // owned; closed by Close
	sectors uint64

	mu sync.Mutex
	// guarded by mu
	act *virtio.Activation // nil until activated
}

var _ virtio.Device = (*Device)(nil)

// New opens cfg.Path and returns the device. The file's size, rounded down
// to 512-byte sectors, is the capacity the guest sees.
func New(cfg Config, log *slog.Logger) (*Device, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	flag := os.O_RDWR
	if cfg.ReadOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(cfg.Path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("opening drive %q: %w", cfg.ID, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("opening drive %q: %w", cfg.ID, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("drive %q: %s is not a regular file; only plain file drives are supported", cfg.ID, cfg.Path)
	}
	d := &Device{cfg: cfg, log: virtio.LimitLogs(log.With("drive", cfg.ID)), file: f, sectors: uint64(fi.Size()) / abi.BlkSectorSize}
	if rem := fi.Size() % abi.BlkSectorSize; rem != 0 {
		d.log.Warn("virtio-blk: drive size is not a multiple of 512; the last partial sector is not visible to the guest",
			"path", cfg.Path, "size", fi.Size())
	}
	return d, nil
}

// Config returns the configuration the device was built from, with the
// backing file SetPath last switched to.
func (d *Device) Config() Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

// Sectors returns the capacity in 512-byte sectors.
func (d *Device) Sectors() uint64 { return d.sectors }

// DeviceID implements virtio.Device.
func (d *Device) DeviceID() uint32 { return abi.IDBlock }

// Features implements virtio.Device.
func (d *Device) Features() uint64 {
	f := uint64(1<<abi.BlkFFlush | 1<<abi.BlkFSegMax | 1<<abi.FIndirectDesc | 1<<abi.FEventIdx)
	if d.cfg.ReadOnly {
		f |= 1 << abi.BlkFRO
	}
	return f
}

// QueueMaxSizes implements virtio.Device: one request queue.
func (d *Device) QueueMaxSizes() []uint16 { return []uint16{QueueSize} }

// ReadConfig implements virtio.Device: struct virtio_blk_config up to
// seg_max (spec 5.2.4).
func (d *Device) ReadConfig(off uint64, data []byte) {
	var c [abi.BlkConfigOffSegMax + 4]byte
	le.PutUint64(c[abi.BlkConfigOffCapacity:], d.sectors)
	le.PutUint32(c[abi.BlkConfigOffSegMax:], segMax)
	if off < uint64(len(c)) {
		copy(data, c[off:])
	}
}

// WriteConfig implements virtio.Device; the fields we expose are read-only.
func (d *Device) WriteConfig(off uint64, data []byte) {
	d.log.Warn("virtio-blk: guest wrote read-only configuration space", "offset", off, "size", len(data))
}

// Activate implements virtio.Device.
func (d *Device) Activate(a virtio.Activation) error {
	if a.Queues[0] == nil {
		return fmt.Errorf("virtio-blk: the driver did not enable the request queue")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.act = &a
	return nil
}

// Reset implements virtio.Device.
func (d *Device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.act = nil
}

// Notify implements virtio.Device: it serves every available request on the
// calling vCPU thread.
func (d *Device) Notify(int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.act == nil {
		return
	}
	q := d.act.Queues[0]
	served := 0
	for {
		c, err := q.Pop()
		if err != nil {
			d.act.NeedsReset(fmt.Errorf("virtio-blk request queue: %w", err))
			break
		}
		if c == nil {
			break
		}
		written := d.serve(c)
		if err := q.Push(c.Head, written); err != nil {
			d.act.NeedsReset(fmt.Errorf("virtio-blk request queue: %w", err))
			break
		}
		served++
	}
	if served > 0 {
		q.Interrupt()
	}
}

// Close implements virtio.Device: it closes the backing file.
func (d *Device) Close() error {
	if err := d.file.Close(); err != nil {
		return fmt.Errorf("closing drive %q: %w", d.cfg.ID, err)
	}
	return nil
}

// fdatasync flushes the file's data to stable storage.
func (d *Device) fdatasync() error {
	rc, err := d.file.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fdatasync(int(fd)) }); err != nil {
		return err
	}
	return serr
}
