package vmm

import (
	"strings"
	"testing"

	"github.com/thawvm/thaw/internal/fcapi"
)

func TestMachineConfigThroughAPI(t *testing.T) {
	m := New(Config{}, testLogger(t))
	defer m.Close()
	if got, want := m.MachineConfig(), (fcapi.MachineConfig{VcpuCount: 1, MemSizeMib: 128, HugePages: fcapi.HugePagesNone}); got != want {
		t.Errorf("default machine config: got %+v, want %+v", got, want)
	}
	tests := []struct {
		name string
		mc   fcapi.MachineConfig
		want string // error substring; "" for success
	}{
		{"ok", fcapi.MachineConfig{VcpuCount: 8, MemSizeMib: 256}, ""},
		{"too many vcpus", fcapi.MachineConfig{VcpuCount: 9, MemSizeMib: 256}, "at most 8"},
		{"too little memory", fcapi.MachineConfig{VcpuCount: 1, MemSizeMib: 8}, "mem_size_mib"},
		{"smt", fcapi.MachineConfig{VcpuCount: 2, MemSizeMib: 256, SMT: true}, "smt"},
		{"dirty pages", fcapi.MachineConfig{VcpuCount: 1, MemSizeMib: 256, TrackDirtyPages: true}, "track_dirty_pages"},
		{"huge pages", fcapi.MachineConfig{VcpuCount: 1, MemSizeMib: 256, HugePages: fcapi.HugePages2M}, "huge_pages"},
	}
	for _, tt := range tests {
		err := m.SetMachineConfig(tt.mc)
		if tt.want == "" {
			if err != nil {
				t.Errorf("%s: %v", tt.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error mentioning %q", tt.name, err, tt.want)
		}
	}
	if got := m.MachineConfig(); got.VcpuCount != 8 || got.MemSizeMib != 256 {
		t.Errorf("machine config after the accepted PUT: got %+v, want 8 vCPUs, 256 MiB", got)
	}
}

func TestBootSourceThroughAPI(t *testing.T) {
	m := New(Config{}, testLogger(t))
	defer m.Close()
	if err := m.SetBootSource(fcapi.BootSource{KernelImagePath: "/nonexistent/vmlinux"}); err == nil || !strings.Contains(err.Error(), "kernel_image_path") {
		t.Errorf("missing kernel: got %v, want an error naming kernel_image_path", err)
	}
	if err := m.SetBootSource(fcapi.BootSource{KernelImagePath: "/"}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory as kernel: got %v, want 'not a regular file'", err)
	}
	if err := m.SetBootSource(fcapi.BootSource{KernelImagePath: "/proc/self/exe", InitrdPath: "/nonexistent/initrd"}); err == nil || !strings.Contains(err.Error(), "initrd_path") {
		t.Errorf("missing initrd: got %v, want an error naming initrd_path", err)
	}
	if err := m.SetBootSource(fcapi.BootSource{KernelImagePath: "/proc/self/exe"}); err != nil {
		t.Fatal(err)
	}
	if got := m.Config().Cmdline; got != DefaultCmdline {
		t.Errorf("command line without boot_args: got %q, want the default %q", got, DefaultCmdline)
	}
}
