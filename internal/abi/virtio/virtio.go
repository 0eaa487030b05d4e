// Package virtio holds the constants and wire layouts of the virtio 1.2
// specification (OASIS, "Virtual I/O Device (VIRTIO) Version 1.2") that the
// VMM's virtio-mmio transport, split virtqueues, block device and vsock device
// use. It is logic-free: names follow the spec's spelling, each block cites
// its section, and every packed layout is described by byte offsets plus a
// size that the tests (and compile-time checks) tie together. Guest-shared
// structures are never overlaid with Go structs; readers use these offsets
// with encoding/binary (little-endian, spec 1.4).
package virtio

// Device status field bits (spec 2.1).
const (
	StatusAcknowledge      = 1
	StatusDriver           = 2
	StatusDriverOK         = 4
	StatusFeaturesOK       = 8
	StatusDeviceNeedsReset = 64
	StatusFailed           = 128
)

// Reserved feature bits (spec 6) and ring feature bits (spec 2.7).
const (
	FIndirectDesc   = 28 // VIRTIO_F_INDIRECT_DESC, spec 2.7.5.3
	FEventIdx       = 29 // VIRTIO_F_EVENT_IDX, spec 2.7.7
	FVersion1       = 32 // VIRTIO_F_VERSION_1
	FAccessPlatform = 33 // VIRTIO_F_ACCESS_PLATFORM
	FRingPacked     = 34 // VIRTIO_F_RING_PACKED
	FInOrder        = 35 // VIRTIO_F_IN_ORDER
	FOrderPlatform  = 36 // VIRTIO_F_ORDER_PLATFORM
	FSRIOV          = 37 // VIRTIO_F_SR_IOV
	FNotifData      = 38 // VIRTIO_F_NOTIFICATION_DATA
	FRingReset      = 40 // VIRTIO_F_RING_RESET
)

// Device IDs (spec 5).
const (
	IDNet     = 1
	IDBlock   = 2
	IDConsole = 3
	IDEntropy = 4
	IDVsock   = 19
)

// virtio-mmio register offsets inside the device's window (spec 4.2.2,
// "MMIO Device Register Layout"). All are 32 bits wide.
const (
	MMIOMagicValue        = 0x000
	MMIOVersion           = 0x004
	MMIODeviceID          = 0x008
	MMIOVendorID          = 0x00c
	MMIODeviceFeatures    = 0x010
	MMIODeviceFeaturesSel = 0x014
	MMIODriverFeatures    = 0x020
	MMIODriverFeaturesSel = 0x024
	MMIOQueueSel          = 0x030
	MMIOQueueNumMax       = 0x034
	MMIOQueueNum          = 0x038
	MMIOQueueReady        = 0x044
	MMIOQueueNotify       = 0x050
	MMIOInterruptStatus   = 0x060
	MMIOInterruptACK      = 0x064
	MMIOStatus            = 0x070
	MMIOQueueDescLow      = 0x080
	MMIOQueueDescHigh     = 0x084
	MMIOQueueDriverLow    = 0x090
	MMIOQueueDriverHigh   = 0x094
	MMIOQueueDeviceLow    = 0x0a0
	MMIOQueueDeviceHigh   = 0x0a4
	MMIOSHMSel            = 0x0ac
	MMIOSHMLenLow         = 0x0b0
	MMIOSHMLenHigh        = 0x0b4
	MMIOSHMBaseLow        = 0x0b8
	MMIOSHMBaseHigh       = 0x0bc
	MMIOQueueReset        = 0x0c0
	MMIOConfigGeneration  = 0x0fc
	MMIOConfig            = 0x100
)

// virtio-mmio identification values (spec 4.2.2).
const (
	MMIOMagic         = 0x74726976 // "virt" in little-endian
	MMIOVersionModern = 2          // version 1 is the legacy interface
	MMIOWindowSize    = 0x1000     // Firecracker's per-device window
)

// Interrupt status bits (spec 4.2.2, InterruptStatus).
const (
	InterruptUsedBuffer   = 1 // "Used Buffer Notification"
	InterruptConfigChange = 2 // "Configuration Change Notification"
)
