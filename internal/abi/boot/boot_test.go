package boot

import (
	"encoding/binary"
	"testing"
)

func TestSizes(t *testing.T) {
	tests := []struct {
		name string
		v    any
		want int
	}{
		{"boot_e820_entry", E820Entry{}, 20},
		{"hvm_start_info", HVMStartInfo{}, 56},
		{"hvm_modlist_entry", HVMModlistEntry{}, 32},
		{"hvm_memmap_table_entry", HVMMemmapTableEntry{}, 24},
		{"mpf_intel", MPFIntel{}, 16},
		{"mpc_table", MPCTable{}, 44},
		{"mpc_cpu", MPCCPU{}, 20},
		{"mpc_bus", MPCBus{}, 8},
		{"mpc_ioapic", MPCIOAPIC{}, 8},
		{"mpc_intsrc", MPCIntSrc{}, 8},
		{"mpc_lintsrc", MPCLIntSrc{}, 8},
	}
	for _, tt := range tests {
		if got := binary.Size(tt.v); got != tt.want {
			t.Errorf("packed size of struct %s: got %d, want %d", tt.name, got, tt.want)
		}
	}
	// The e820 table must end inside the zero page.
	if end := E820Table + E820MaxEntriesZeropage*20; end > ZeroPageSize {
		t.Errorf("e820 table ends at %#x, past the %d-byte zero page", end, ZeroPageSize)
	}
}
