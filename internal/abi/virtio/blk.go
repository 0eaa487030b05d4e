package virtio

// Block device (spec 5.2).

// Block feature bits (spec 5.2.3).
const (
	BlkFSizeMax     = 1
	BlkFSegMax      = 2
	BlkFGeometry    = 4
	BlkFRO          = 5
	BlkFBlkSize     = 6
	BlkFFlush       = 9
	BlkFTopology    = 10
	BlkFConfigWCE   = 11
	BlkFMQ          = 12
	BlkFDiscard     = 13
	BlkFWriteZeroes = 14
)

// Block configuration layout, struct virtio_blk_config (spec 5.2.4):
// le64 capacity (in 512-byte sectors); le32 size_max; le32 seg_max; ...
const (
	BlkConfigOffCapacity  = 0
	BlkConfigOffSizeMax   = 8
	BlkConfigOffSegMax    = 12
	BlkConfigCapacitySize = 8
)

// Block request header, the readable start of every request
// (spec 5.2.6, struct virtio_blk_req): le32 type; le32 reserved; le64 sector.
const (
	BlkReqOffType     = 0
	BlkReqOffReserved = 4
	BlkReqOffSector   = 8
	BlkReqHeaderSize  = 16
)

// Block request types (spec 5.2.6).
const (
	BlkTIn          = 0
	BlkTOut         = 1
	BlkTFlush       = 4
	BlkTGetID       = 8
	BlkTGetLifetime = 10
	BlkTDiscard     = 11
	BlkTWriteZeroes = 13
	BlkTSecureErase = 14
)

// Block request status, the last (device-writable) byte of every request
// (spec 5.2.6).
const (
	BlkSOK     = 0
	BlkSIOErr  = 1
	BlkSUnsupp = 2
)

// BlkSectorSize is the unit of capacity and of a request's sector field
// (spec 5.2.4, "capacity ... in 512-byte sectors"); BlkIDBytes is the size of
// the GET_ID answer (spec 5.2.6: "20 bytes").
const (
	BlkSectorSize = 512
	BlkIDBytes    = 20
)
