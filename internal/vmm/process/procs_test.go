package process

import "testing"

func TestProcsFor(t *testing.T) {
	for _, tt := range []struct{ ceiling, vcpus, want int }{
		{ceiling: 2, vcpus: 2, want: 2},  // this 2-CPU machine: unchanged
		{ceiling: 64, vcpus: 1, want: 2}, // a large host: not 64
		{ceiling: 64, vcpus: 2, want: 3},
		{ceiling: 64, vcpus: 32, want: 33},
		{ceiling: 8, vcpus: 32, want: 8}, // never above the ceiling
		{ceiling: 1, vcpus: 4, want: 1},
	} {
		if got := ProcsFor(tt.ceiling, tt.vcpus); got != tt.want {
			t.Errorf("ProcsFor(%d, %d): got %d, want %d", tt.ceiling, tt.vcpus, got, tt.want)
		}
	}
}
