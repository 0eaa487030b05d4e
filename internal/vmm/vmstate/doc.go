// Package vmstate is the on-disk format of a thaw-vmm snapshot's VM state
// file (Firecracker's snapshot_path): everything but guest memory, which
// lives in the memory file as the guest regions, raw, concatenated.
//
// # Envelope
//
// A file is a 32-byte header followed by the payload:
//
//	offset size
//	0      8    magic "THAWVMST"
//	8      4    format version, little-endian (FormatVersion)
//	12     4    flags, zero (reserved; a reader rejects unknown bits)
//	16     8    payload length in bytes, little-endian
//	24     4    CRC-32C (Castagnoli) of the payload
//	28     4    CRC-32C of bytes 0..28 of the header
//
// Decode checks, in order, and names the first failure: too short to be a
// vmstate file, wrong magic (another file), header checksum (corrupt
// header), version (written by another build), flags, payload length over
// the cap (too large), payload shorter than announced (truncated), bytes
// after it (corrupt or concatenated), payload checksum (corrupt).
//
// CRC-32C rather than SHA-256: the checksum guards against accidents (a
// torn write, a truncated copy, bit rot), not against an attacker who can
// write the snapshot directory — such an attacker can rewrite a SHA-256 as
// easily as a CRC, and authenticity would need a key. CRC-32C detects every
// burst error up to 32 bits and all the corruption classes above, and runs
// at memory speed (SSE4.2's CRC32 instruction via hash/crc32).
//
// # Payload
//
// The payload is JSON (State), so a snapshot is inspectable with jq and
// fields can be added without a format bump; decoding rejects unknown
// fields so that a file from a newer build is never half-understood. Kernel
// state (struct kvm_regs, kvm_sregs, kvm_lapic_state, ...) is stored as the
// exact bytes of the kernel's uapi struct, base64 in JSON (Kernel[T]): the
// uapi layout is stable by the kernel's own rules, so the encoding cannot
// drift with our Go field names, and a wrong length is caught at decode
// time. XSAVE areas are variable-sized byte strings; MSRs and CPUID leaves
// are lists of small JSON objects.
package vmstate
