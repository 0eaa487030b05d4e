package vmstate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Magic starts every vmstate file.
const Magic = "THAWVMST"

// FormatVersion is the envelope and payload version this build writes and
// reads. Bump it for any change an older reader would misread.
const FormatVersion = 1

// HeaderSize is the size of the envelope header.
const HeaderSize = 32

// DefaultMaxPayload caps the payload Decode accepts. A 32-vCPU state with
// 12 KiB XSAVE areas is well under 2 MiB of JSON; the cap only bounds what a
// wrong or hostile file can make us allocate.
const DefaultMaxPayload = 16 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Errors Decode wraps, so callers can tell the cases apart.
var (
	ErrNotVMState = errors.New("not a thaw vmstate file")
	ErrVersion    = errors.New("unsupported vmstate format version")
	ErrTruncated  = errors.New("vmstate file is truncated")
	ErrCorrupt    = errors.New("vmstate file is corrupt")
	ErrTooLarge   = errors.New("vmstate payload is too large")
)

// Seal wraps payload in the envelope.
func Seal(payload []byte) []byte {
	out := make([]byte, HeaderSize, HeaderSize+len(payload))
	copy(out, Magic)
	le := binary.LittleEndian
	le.PutUint32(out[8:], FormatVersion)
	le.PutUint32(out[12:], 0)
	le.PutUint64(out[16:], uint64(len(payload)))
	le.PutUint32(out[24:], crc32.Checksum(payload, castagnoli))
	le.PutUint32(out[28:], crc32.Checksum(out[:28], castagnoli))
	return append(out, payload...)
}

// Open checks the envelope of b and returns its payload (aliasing b).
// maxPayload caps the announced payload length; 0 means DefaultMaxPayload.
func Open(b []byte, maxPayload uint64) ([]byte, error) {
	if maxPayload == 0 {
		maxPayload = DefaultMaxPayload
	}
	if len(b) < len(Magic) || string(b[:len(Magic)]) != Magic {
		return nil, fmt.Errorf("%w: it does not start with %q (is this the memory file, or another tool's snapshot?)", ErrNotVMState, Magic)
	}
	if len(b) < HeaderSize {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrTruncated, len(b), HeaderSize)
	}
	le := binary.LittleEndian
	if got, want := le.Uint32(b[28:]), crc32.Checksum(b[:28], castagnoli); got != want {
		return nil, fmt.Errorf("%w: header checksum %#08x, computed %#08x", ErrCorrupt, got, want)
	}
	if v := le.Uint32(b[8:]); v != FormatVersion {
		return nil, fmt.Errorf("%w: file has version %d, this build reads version %d (re-create the snapshot with this build)", ErrVersion, v, FormatVersion)
	}
	if f := le.Uint32(b[12:]); f != 0 {
		return nil, fmt.Errorf("%w: unknown header flags %#x", ErrVersion, f)
	}
	n := le.Uint64(b[16:])
	if n > maxPayload {
		return nil, fmt.Errorf("%w: header announces %d bytes, more than the %d-byte limit", ErrTooLarge, n, maxPayload)
	}
	rest := uint64(len(b) - HeaderSize)
	if rest < n {
		return nil, fmt.Errorf("%w: header announces %d payload bytes, file holds %d", ErrTruncated, n, rest)
	}
	if rest > n {
		return nil, fmt.Errorf("%w: %d unexpected bytes after the %d-byte payload", ErrCorrupt, rest-n, n)
	}
	payload := b[HeaderSize:]
	if got, want := le.Uint32(b[24:]), crc32.Checksum(payload, castagnoli); got != want {
		return nil, fmt.Errorf("%w: payload checksum %#08x, computed %#08x", ErrCorrupt, got, want)
	}
	return payload, nil
}
