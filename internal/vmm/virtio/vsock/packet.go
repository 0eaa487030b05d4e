package vsock

import (
	"encoding/binary"
	"fmt"
	"strconv"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
)

var le = binary.LittleEndian

// maxPayload is the largest payload one packet may carry, Linux's
// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE; larger TX packets are dropped.
const maxPayload = 64 << 10

// header is a decoded struct virtio_vsock_hdr (spec 5.10.6).
type header struct {
	srcCID, dstCID   uint64
	srcPort, dstPort uint32
	len              uint32
	typ, op          uint16
	flags            uint32
	bufAlloc, fwdCnt uint32
}

// parseHeader decodes the header at the start of b.
func parseHeader(b []byte) (header, error) {
	if len(b) < abi.VsockHdrSize {
		return header{}, fmt.Errorf("vsock header needs %d bytes, got %d", abi.VsockHdrSize, len(b))
	}
	return header{
		srcCID:   le.Uint64(b[abi.VsockHdrOffSrcCID:]),
		dstCID:   le.Uint64(b[abi.VsockHdrOffDstCID:]),
		srcPort:  le.Uint32(b[abi.VsockHdrOffSrcPort:]),
		dstPort:  le.Uint32(b[abi.VsockHdrOffDstPort:]),
		len:      le.Uint32(b[abi.VsockHdrOffLen:]),
		typ:      le.Uint16(b[abi.VsockHdrOffType:]),
		op:       le.Uint16(b[abi.VsockHdrOffOp:]),
		flags:    le.Uint32(b[abi.VsockHdrOffFlags:]),
		bufAlloc: le.Uint32(b[abi.VsockHdrOffBufAlloc:]),
		fwdCnt:   le.Uint32(b[abi.VsockHdrOffFwdCnt:]),
	}, nil
}

// encode writes h into the first VsockHdrSize bytes of b.
func (h header) encode(b []byte) {
	le.PutUint64(b[abi.VsockHdrOffSrcCID:], h.srcCID)
	le.PutUint64(b[abi.VsockHdrOffDstCID:], h.dstCID)
	le.PutUint32(b[abi.VsockHdrOffSrcPort:], h.srcPort)
	le.PutUint32(b[abi.VsockHdrOffDstPort:], h.dstPort)
	le.PutUint32(b[abi.VsockHdrOffLen:], h.len)
	le.PutUint16(b[abi.VsockHdrOffType:], h.typ)
	le.PutUint16(b[abi.VsockHdrOffOp:], h.op)
	le.PutUint32(b[abi.VsockHdrOffFlags:], h.flags)
	le.PutUint32(b[abi.VsockHdrOffBufAlloc:], h.bufAlloc)
	le.PutUint32(b[abi.VsockHdrOffFwdCnt:], h.fwdCnt)
}

// checkTX validates a packet the guest sent: from its own CID, to the
// host, a stream packet with a known op and a payload that fits both the
// chain (avail readable bytes after the header) and maxPayload. Packets
// failing it are dropped without a reply, since their addresses cannot be
// trusted.
func checkTX(h header, guestCID uint64, avail uint64) error {
	switch {
	case h.srcCID != guestCID:
		return fmt.Errorf("source CID %d is not the guest's %d", h.srcCID, guestCID)
	case h.dstCID != abi.VsockCIDHost:
		return fmt.Errorf("destination CID %d is not the host", h.dstCID)
	case h.op == abi.VsockOpInvalid || h.op > abi.VsockOpCreditRequest:
		return fmt.Errorf("unknown op %d", h.op)
	case h.len > maxPayload:
		return fmt.Errorf("payload of %d bytes exceeds %d", h.len, maxPayload)
	case uint64(h.len) > avail:
		return fmt.Errorf("payload of %d bytes but the chain holds %d after the header", h.len, avail)
	case h.op != abi.VsockOpRW && h.len != 0:
		return fmt.Errorf("op %d carries %d payload bytes", h.op, h.len)
	}
	return nil
}

func itoa(v uint32) string { return strconv.FormatUint(uint64(v), 10) }
