// Package wire is what test/linux's driver (host side) and guest init agree
// on: the vsock ports, the deterministic payloads they send each other, and
// how a payload is framed on a stream.
package wire

import (
	"encoding/binary"
	"fmt"
	"io"
)

const (
	// GuestPort is the guest's vsock listener: it echoes each frame back.
	GuestPort = 1024
	// HostPort is where the guest connects out (the VMM forwards it to
	// <uds_path>_1025); the host answers with the SHA-256 of the frame.
	HostPort = 1025
	// PayloadSize is the size of each payload: over 1 MiB, so that flow
	// control has to cycle credit several times.
	PayloadSize = 3 << 19 // 1.5 MiB
	// MaxFrame caps what ReadFrame accepts.
	MaxFrame = 16 << 20
	// Seed makes the devices step's payloads: the guest gets it on its
	// command line (thaw.seed) and names it in the file it writes.
	Seed = 20261127
)

// Pattern returns n deterministic bytes for seed (xorshift64*), so each
// side can check what the other sent without sending it twice.
func Pattern(seed uint64, n int) []byte {
	x := seed | 1
	b := make([]byte, n+7)
	for i := 0; i < n; i += 8 {
		x ^= x >> 12
		x ^= x << 25
		x ^= x >> 27
		binary.LittleEndian.PutUint64(b[i:], x*2685821657736338717)
	}
	return b[:n]
}

// WriteFrame writes b with an 8-byte big-endian length before it.
func WriteFrame(w io.Writer, b []byte) error {
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(len(b)))
	if _, err := w.Write(hdr[:]); err != nil {
		return fmt.Errorf("writing a frame header: %w", err)
	}
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("writing a %d-byte frame: %w", len(b), err)
	}
	return nil
}

// ReadFrame reads one frame written by WriteFrame.
func ReadFrame(r io.Reader) ([]byte, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("reading a frame header: %w", err)
	}
	n := binary.BigEndian.Uint64(hdr[:])
	if n > MaxFrame {
		return nil, fmt.Errorf("frame of %d bytes: more than the %d allowed", n, MaxFrame)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("reading a %d-byte frame: %w", n, err)
	}
	return b, nil
}
