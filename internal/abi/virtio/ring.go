package virtio

// Split virtqueue layout (spec 2.7). All fields little-endian.

// Descriptor table entry, struct virtq_desc (spec 2.7.5):
// le64 addr; le32 len; le16 flags; le16 next.
const (
	DescOffAddr  = 0
	DescOffLen   = 8
	DescOffFlags = 12
	DescOffNext  = 14
	DescSize     = 16
)

// Descriptor flags (spec 2.7.5).
const (
	DescFNext     = 1 // VIRTQ_DESC_F_NEXT: the buffer continues via next
	DescFWrite    = 2 // VIRTQ_DESC_F_WRITE: device-writable (else readable)
	DescFIndirect = 4 // VIRTQ_DESC_F_INDIRECT: the buffer is a descriptor table
)

// Available ring, struct virtq_avail (spec 2.7.6): le16 flags; le16 idx;
// le16 ring[size]; le16 used_event (only with VIRTIO_F_EVENT_IDX).
const (
	AvailOffFlags     = 0
	AvailOffIdx       = 2
	AvailOffRing      = 4
	AvailElemSize     = 2
	AvailFNoInterrupt = 1 // VIRTQ_AVAIL_F_NO_INTERRUPT
)

// Used ring, struct virtq_used (spec 2.7.8): le16 flags; le16 idx;
// struct virtq_used_elem ring[size]; le16 avail_event.
// struct virtq_used_elem: le32 id; le32 len.
const (
	UsedOffFlags   = 0
	UsedOffIdx     = 2
	UsedOffRing    = 4
	UsedElemOffID  = 0
	UsedElemOffLen = 4
	UsedElemSize   = 8
	UsedFNoNotify  = 1 // VIRTQ_USED_F_NO_NOTIFY
)

// Alignment requirements of the three parts (spec 2.7, table "Virtqueue Part
// Alignment") and the largest split queue (spec 2.7: "Queue Size ... maximum
// ... 32768").
const (
	DescAlign    = 16
	AvailAlign   = 2
	UsedAlign    = 4
	MaxQueueSize = 32768
)
