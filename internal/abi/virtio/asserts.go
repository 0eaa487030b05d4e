package virtio

// Compile-time size checks: each array length is negative (a compile error)
// unless the packed layout's last field ends exactly at its declared size.
var (
	_ [DescSize - (DescOffNext + 2)]struct{}
	_ [(DescOffNext + 2) - DescSize]struct{}
	_ [UsedElemSize - (UsedElemOffLen + 4)]struct{}
	_ [(UsedElemOffLen + 4) - UsedElemSize]struct{}
	_ [BlkReqHeaderSize - (BlkReqOffSector + 8)]struct{}
	_ [(BlkReqOffSector + 8) - BlkReqHeaderSize]struct{}
	_ [VsockHdrSize - (VsockHdrOffFwdCnt + 4)]struct{}
	_ [(VsockHdrOffFwdCnt + 4) - VsockHdrSize]struct{}
	_ [VsockEventSize - (VsockEventOffID + 4)]struct{}
	_ [(VsockEventOffID + 4) - VsockEventSize]struct{}
)
