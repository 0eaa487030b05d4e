package blk

import (
	"errors"
	"fmt"
	"io"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio"
)

// request is a parsed virtio_blk_req (spec 5.2.6): a 16-byte readable
// header, data (readable for OUT, writable for IN and GET_ID), and a
// one-byte writable status at the very end.
type request struct {
	typ    uint32
	sector uint64
	// data is the length of the data part; it lies at readable offset 16
	// for OUT, at writable offset 0 otherwise.
	data uint64
}

// errNoStatus marks a chain without a writable status byte: nothing can be
// reported to the guest, so the chain is returned with zero length.
var errNoStatus = errors.New("no writable status byte")

// parseRequest reads and checks a request's framing. An error wrapping
// errNoStatus means no status can be written; any other error is answered
// with VIRTIO_BLK_S_IOERR.
func parseRequest(c *virtio.Chain, sectors uint64) (request, error) {
	if c.Writable() == 0 {
		return request{}, fmt.Errorf("%w: chain %d has %d readable and 0 writable bytes", errNoStatus, c.Head, c.Readable())
	}
	if c.Readable() < abi.BlkReqHeaderSize {
		return request{}, fmt.Errorf("header needs %d readable bytes, chain %d has %d", abi.BlkReqHeaderSize, c.Head, c.Readable())
	}
	var h [abi.BlkReqHeaderSize]byte
	if err := c.ReadAt(h[:], 0); err != nil {
		return request{}, err
	}
	r := request{typ: le.Uint32(h[abi.BlkReqOffType:]), sector: le.Uint64(h[abi.BlkReqOffSector:])}
	extraIn, extraOut := c.Readable()-abi.BlkReqHeaderSize, c.Writable()-1
	switch r.typ {
	case abi.BlkTIn:
		if extraIn != 0 {
			return r, fmt.Errorf("read request carries %d readable data bytes", extraIn)
		}
		r.data = extraOut
	case abi.BlkTOut:
		if extraOut != 0 {
			return r, fmt.Errorf("write request has %d writable bytes besides the status", extraOut)
		}
		r.data = extraIn
	case abi.BlkTGetID:
		r.data = extraOut
		return r, nil
	default:
		return r, nil // FLUSH ignores sector and data; unknown types get UNSUPP
	}
	if r.data%abi.BlkSectorSize != 0 {
		return r, fmt.Errorf("data length %d is not a multiple of %d", r.data, abi.BlkSectorSize)
	}
	if n := r.data / abi.BlkSectorSize; r.sector > sectors || n > sectors-r.sector {
		return r, fmt.Errorf("sectors [%d, +%d) beyond capacity %d", r.sector, n, sectors)
	}
	return r, nil
}

// serve performs one request and returns how many bytes it wrote into the
// chain's writable buffers (data plus the status byte).
func (d *Device) serve(c *virtio.Chain) uint32 {
	r, err := parseRequest(c, d.sectors)
	if errors.Is(err, errNoStatus) {
		d.log.Warn("virtio-blk: dropping request", "err", err)
		return 0
	}
	status, written := byte(abi.BlkSOK), uint64(0)
	if err != nil {
		d.log.Warn("virtio-blk: bad request", "type", r.typ, "err", err)
		status = abi.BlkSIOErr
	} else {
		status, written = d.do(c, r)
	}
	if err := c.WriteAt([]byte{status}, c.Writable()-1); err != nil {
		d.log.Warn("virtio-blk: writing status", "err", err) // cannot happen: the chain was checked when popped
		return 0
	}
	return uint32(written + 1)
}

// do executes a well-framed request and returns its status and the number
// of data bytes written to the guest.
func (d *Device) do(c *virtio.Chain, r request) (status byte, written uint64) {
	off := int64(r.sector) * abi.BlkSectorSize
	switch r.typ {
	case abi.BlkTIn:
		segs, err := c.Segments(true, 0, r.data)
		if err != nil {
			return abi.BlkSIOErr, 0
		}
		for _, s := range segs {
			n, err := d.file.ReadAt(s, off)
			if err == io.EOF && n == len(s) {
				err = nil
			}
			if err != nil {
				d.log.Error("virtio-blk: reading drive", "offset", off, "err", err)
				return abi.BlkSIOErr, written
			}
			off += int64(n)
			written += uint64(n)
		}
		return abi.BlkSOK, written
	case abi.BlkTOut:
		if d.cfg.ReadOnly {
			// Spec 5.2.6.2: a device offering VIRTIO_BLK_F_RO answers
			// writes with IOERR and writes nothing.
			return abi.BlkSIOErr, 0
		}
		segs, err := c.Segments(false, abi.BlkReqHeaderSize, r.data)
		if err != nil {
			return abi.BlkSIOErr, 0
		}
		for _, s := range segs {
			if _, err := d.file.WriteAt(s, off); err != nil {
				d.log.Error("virtio-blk: writing drive", "offset", off, "err", err)
				return abi.BlkSIOErr, 0
			}
			off += int64(len(s))
		}
		return abi.BlkSOK, 0
	case abi.BlkTFlush:
		if d.cfg.ReadOnly {
			return abi.BlkSOK, 0
		}
		if err := d.fdatasync(); err != nil {
			d.log.Error("virtio-blk: flushing drive", "err", err)
			return abi.BlkSIOErr, 0
		}
		return abi.BlkSOK, 0
	case abi.BlkTGetID:
		var id [abi.BlkIDBytes]byte
		copy(id[:], d.cfg.ID) // spec 5.2.6: zero-padded, unterminated if 20 bytes long
		n := min(r.data, abi.BlkIDBytes)
		if err := c.WriteAt(id[:n], 0); err != nil {
			return abi.BlkSIOErr, 0
		}
		return abi.BlkSOK, n
	}
	d.log.Warn("virtio-blk: unsupported request type", "type", r.typ)
	return abi.BlkSUnsupp, 0
}
