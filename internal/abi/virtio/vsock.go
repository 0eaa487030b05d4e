package virtio

// Socket device (spec 5.10).

// Vsock feature bits (spec 5.10.3).
const (
	VsockFStream    = 0 // VIRTIO_VSOCK_F_STREAM
	VsockFSeqpacket = 1 // VIRTIO_VSOCK_F_SEQPACKET
)

// Vsock virtqueues (spec 5.10.2).
const (
	VsockQueueRX    = 0
	VsockQueueTX    = 1
	VsockQueueEvent = 2
	VsockNumQueues  = 3
)

// Vsock configuration layout, struct virtio_vsock_config (spec 5.10.4):
// le64 guest_cid (only the low 32 bits are used).
const (
	VsockConfigOffGuestCID = 0
	VsockConfigSize        = 8
)

// Well-known CIDs (spec 5.10.4 and vsock(7)): the host is always 2.
const (
	VsockCIDHost = 2
)

// Vsock packet header, struct virtio_vsock_hdr (spec 5.10.6), packed:
// le64 src_cid; le64 dst_cid; le32 src_port; le32 dst_port; le32 len;
// le16 type; le16 op; le32 flags; le32 buf_alloc; le32 fwd_cnt.
const (
	VsockHdrOffSrcCID   = 0
	VsockHdrOffDstCID   = 8
	VsockHdrOffSrcPort  = 16
	VsockHdrOffDstPort  = 20
	VsockHdrOffLen      = 24
	VsockHdrOffType     = 28
	VsockHdrOffOp       = 30
	VsockHdrOffFlags    = 32
	VsockHdrOffBufAlloc = 36
	VsockHdrOffFwdCnt   = 40
	VsockHdrSize        = 44
)

// Vsock socket types (spec 5.10.6).
const (
	VsockTypeStream    = 1
	VsockTypeSeqpacket = 2
)

// Vsock operations (spec 5.10.6).
const (
	VsockOpInvalid       = 0
	VsockOpRequest       = 1
	VsockOpResponse      = 2
	VsockOpRST           = 3
	VsockOpShutdown      = 4
	VsockOpRW            = 5
	VsockOpCreditUpdate  = 6
	VsockOpCreditRequest = 7
)

// Vsock SHUTDOWN flags (spec 5.10.6.5): the sender will receive / send no
// more data.
const (
	VsockShutdownRcv  = 1
	VsockShutdownSend = 2
)

// Vsock event, struct virtio_vsock_event (spec 5.10.6.6): le32 id.
const (
	VsockEventOffID          = 0
	VsockEventSize           = 4
	VsockEventTransportReset = 0 // VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
)
