package shim

import (
	"slices"
	"testing"
)

func TestShimEnv(t *testing.T) {
	env := []string{"PATH=/bin", "GOMAXPROCS=4", "HOME=/root"}
	tests := []struct {
		name  string
		procs int
		want  []string
	}{
		{"automatic keeps the environment", 0, env},
		{"procs replaces GOMAXPROCS", 1, []string{"PATH=/bin", "HOME=/root", "GOMAXPROCS=1"}},
		{"procs adds GOMAXPROCS", 3, []string{"PATH=/bin", "HOME=/root", "GOMAXPROCS=3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := env
			if tt.procs == 3 {
				in = []string{"PATH=/bin", "HOME=/root"}
			}
			if got := shimEnv(in, tt.procs); !slices.Equal(got, tt.want) {
				t.Errorf("shimEnv(%q, %d): got %q, want %q", in, tt.procs, got, tt.want)
			}
		})
	}
}
