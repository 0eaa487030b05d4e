package main

import "testing"

func TestProcsFor(t *testing.T) {
	for _, tt := range []struct{ def, vcpus, want int }{
		{def: 2, vcpus: 2, want: 2},  // this 2-CPU machine: unchanged
		{def: 64, vcpus: 1, want: 2}, // a large host: not 64
		{def: 64, vcpus: 2, want: 3},
		{def: 64, vcpus: 32, want: 33},
		{def: 8, vcpus: 32, want: 8}, // never above the default
		{def: 1, vcpus: 4, want: 1},
	} {
		if got := procsFor(tt.def, tt.vcpus); got != tt.want {
			t.Errorf("procsFor(%d, %d): got %d, want %d", tt.def, tt.vcpus, got, tt.want)
		}
	}
}
