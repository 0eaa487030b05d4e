package virtio

import "testing"

// field is one fixed-width field of a packed spec structure.
type field struct {
	name       string
	off, width int
}

// TestPackedLayouts checks that each structure's fields are contiguous,
// in spec order, and end exactly at its declared size.
func TestPackedLayouts(t *testing.T) {
	tests := []struct {
		name   string
		size   int
		fields []field
	}{
		{"virtq_desc", DescSize, []field{
			{"addr", DescOffAddr, 8}, {"len", DescOffLen, 4},
			{"flags", DescOffFlags, 2}, {"next", DescOffNext, 2}}},
		{"virtq_used_elem", UsedElemSize, []field{
			{"id", UsedElemOffID, 4}, {"len", UsedElemOffLen, 4}}},
		{"virtio_blk_req header", BlkReqHeaderSize, []field{
			{"type", BlkReqOffType, 4}, {"reserved", BlkReqOffReserved, 4},
			{"sector", BlkReqOffSector, 8}}},
		{"virtio_vsock_hdr", VsockHdrSize, []field{
			{"src_cid", VsockHdrOffSrcCID, 8}, {"dst_cid", VsockHdrOffDstCID, 8},
			{"src_port", VsockHdrOffSrcPort, 4}, {"dst_port", VsockHdrOffDstPort, 4},
			{"len", VsockHdrOffLen, 4}, {"type", VsockHdrOffType, 2},
			{"op", VsockHdrOffOp, 2}, {"flags", VsockHdrOffFlags, 4},
			{"buf_alloc", VsockHdrOffBufAlloc, 4}, {"fwd_cnt", VsockHdrOffFwdCnt, 4}}},
		{"virtio_vsock_event", VsockEventSize, []field{{"id", VsockEventOffID, 4}}},
		{"virtio_vsock_config", VsockConfigSize, []field{{"guest_cid", VsockConfigOffGuestCID, 8}}},
	}
	for _, tt := range tests {
		next := 0
		for _, f := range tt.fields {
			if f.off != next {
				t.Errorf("%s.%s at offset %d, want %d", tt.name, f.name, f.off, next)
			}
			next = f.off + f.width
		}
		if next != tt.size {
			t.Errorf("%s fields end at %d, want size %d", tt.name, next, tt.size)
		}
	}
}

// TestMMIORegisters checks the register map against spec 4.2.2: 32-bit
// aligned registers inside the 0x100-byte register area, configuration space
// after it, and the magic value spelling "virt".
func TestMMIORegisters(t *testing.T) {
	regs := []int{MMIOMagicValue, MMIOVersion, MMIODeviceID, MMIOVendorID,
		MMIODeviceFeatures, MMIODeviceFeaturesSel, MMIODriverFeatures,
		MMIODriverFeaturesSel, MMIOQueueSel, MMIOQueueNumMax, MMIOQueueNum,
		MMIOQueueReady, MMIOQueueNotify, MMIOInterruptStatus, MMIOInterruptACK,
		MMIOStatus, MMIOQueueDescLow, MMIOQueueDescHigh, MMIOQueueDriverLow,
		MMIOQueueDriverHigh, MMIOQueueDeviceLow, MMIOQueueDeviceHigh,
		MMIOSHMSel, MMIOSHMLenLow, MMIOSHMLenHigh, MMIOSHMBaseLow,
		MMIOSHMBaseHigh, MMIOQueueReset, MMIOConfigGeneration}
	seen := map[int]bool{}
	for _, r := range regs {
		if r%4 != 0 || r >= MMIOConfig {
			t.Errorf("register 0x%03x: want 4-byte aligned below 0x%x", r, MMIOConfig)
		}
		if seen[r] {
			t.Errorf("register 0x%03x listed twice", r)
		}
		seen[r] = true
	}
	if got, want := string([]byte{MMIOMagic & 0xff, MMIOMagic >> 8 & 0xff, MMIOMagic >> 16 & 0xff, MMIOMagic >> 24}), "virt"; got != want {
		t.Errorf("magic spells %q, want %q", got, want)
	}
}
