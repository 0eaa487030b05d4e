package uffdtest

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
)

// WriteMemoryFile writes a size-byte memory file whose pages are distinct
// and deterministic for seed: each 4 KiB page starts with its page index and
// the seed, followed by pseudo-random bytes, so a page served at the wrong
// offset, from the wrong file or left zero is always detected. Like guest
// memory, which keeps its free pages zero in large blocks, every 8th 256 KiB
// block is all zeros (12.5% of the file).
func WriteMemoryFile(path string, size int64, seed uint64) error {
	if size <= 0 || size%4096 != 0 {
		return fmt.Errorf("memory file size %d: want a positive multiple of 4096", size)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("creating memory file: %w", err)
	}
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	rng := rand.NewChaCha8(key)
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		chunk := buf[:min(int64(len(buf)), size-off)]
		rng.Read(chunk)
		for p := 0; p < len(chunk); p += 4096 {
			page := uint64(off+int64(p)) / 4096
			if page/64%8 == 7 {
				clear(chunk[p : p+4096])
				continue
			}
			binary.LittleEndian.PutUint64(chunk[p:], page)
			binary.LittleEndian.PutUint64(chunk[p+8:], seed)
		}
		if _, err := f.Write(chunk); err != nil {
			f.Close()
			return fmt.Errorf("writing memory file: %w", err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing memory file: %w", err)
	}
	return nil
}
