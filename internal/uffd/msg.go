package uffd

import (
	"encoding/binary"

	abi "github.com/thawvm/thaw/internal/abi/uffd"
)

// Accessors for the union arm of a uffd_msg (see abi.UffdMsg). The kernel
// writes it in native byte order; Thaw supports little-endian hosts only
// (x86-64, arm64).

func faultFlags(m *abi.UffdMsg) uint64   { return binary.LittleEndian.Uint64(m.Arg[0:8]) }
func faultAddress(m *abi.UffdMsg) uint64 { return binary.LittleEndian.Uint64(m.Arg[8:16]) }
func rangeStart(m *abi.UffdMsg) uint64   { return binary.LittleEndian.Uint64(m.Arg[0:8]) }
func rangeEnd(m *abi.UffdMsg) uint64     { return binary.LittleEndian.Uint64(m.Arg[8:16]) }
func forkUfd(m *abi.UffdMsg) int         { return int(int32(binary.LittleEndian.Uint32(m.Arg[0:4]))) }
