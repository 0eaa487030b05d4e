package vsock

import (
	"bytes"
	"strings"
	"testing"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
)

// FuzzHeader parses guest-supplied packet headers: parsing must never
// panic, must round-trip through encode, and checkTX must only accept
// packets from the guest to the host whose payload fits the chain.
func FuzzHeader(f *testing.F) {
	good := make([]byte, abi.VsockHdrSize)
	header{srcCID: 3, dstCID: 2, srcPort: 1, dstPort: 2, len: 5, typ: abi.VsockTypeStream, op: abi.VsockOpRW}.encode(good)
	f.Add(good, uint64(5))
	f.Add(good[:10], uint64(0))
	f.Add(bytes.Repeat([]byte{0xff}, abi.VsockHdrSize), uint64(1<<20))
	f.Fuzz(func(t *testing.T, b []byte, avail uint64) {
		h, err := parseHeader(b)
		if err != nil {
			if len(b) >= abi.VsockHdrSize {
				t.Fatalf("parse of %d bytes failed: %v", len(b), err)
			}
			return
		}
		out := make([]byte, abi.VsockHdrSize)
		h.encode(out)
		if !bytes.Equal(out, b[:abi.VsockHdrSize]) {
			t.Fatalf("round trip changed the header: %x -> %x", b[:abi.VsockHdrSize], out)
		}
		if checkTX(h, guestCID, avail) == nil {
			switch {
			case h.srcCID != guestCID || h.dstCID != abi.VsockCIDHost:
				t.Fatalf("accepted cids %d -> %d", h.srcCID, h.dstCID)
			case uint64(h.len) > avail || h.len > maxPayload:
				t.Fatalf("accepted payload %d with %d available", h.len, avail)
			case h.op == abi.VsockOpInvalid || h.op > abi.VsockOpCreditRequest:
				t.Fatalf("accepted op %d", h.op)
			}
		}
	})
}

// FuzzConnectLine parses the host's "CONNECT <port>" line.
func FuzzConnectLine(f *testing.F) {
	f.Add([]byte("CONNECT 52"))
	f.Add([]byte("CONNECT 4294967295"))
	f.Add([]byte("CONNECT +1"))
	f.Fuzz(func(t *testing.T, line []byte) {
		port, err := parseConnect(line)
		if err != nil {
			return
		}
		digits, ok := bytes.CutPrefix(line, []byte("CONNECT "))
		if !ok || len(digits) == 0 || bytes.Trim(digits, "0123456789") != nil && len(bytes.Trim(digits, "0123456789")) != 0 {
			t.Fatalf("accepted %q as port %d", line, port)
		}
		if got := strings.TrimLeft(string(digits), "0"); got != itoa(port) && !(got == "" && port == 0) {
			t.Fatalf("%q parsed as port %d", line, port)
		}
	})
}
