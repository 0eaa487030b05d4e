package fcapi

import (
	"reflect"
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		into    func() any
		body    string
		want    any    // decoded value when wantErr is ""
		wantErr string // substring of the error
	}{
		{
			name: "boot source",
			into: func() any { return new(BootSource) },
			body: `{"kernel_image_path":"/k","boot_args":"console=ttyS0","initrd_path":null}`,
			want: &BootSource{KernelImagePath: "/k", BootArgs: "console=ttyS0"},
		},
		{
			name:    "field names are case sensitive",
			into:    func() any { return new(BootSource) },
			body:    `{"Kernel_Image_Path":"/k"}`,
			wantErr: "unknown field `Kernel_Image_Path`, want one of `kernel_image_path`, `boot_args`, `initrd_path`",
		},
		{
			name:    "unknown field",
			into:    func() any { return new(BootSource) },
			body:    `{"kernel_image_path":"/k","kernel":"x"}`,
			wantErr: "unknown field `kernel`",
		},
		{
			name:    "duplicate field",
			into:    func() any { return new(BootSource) },
			body:    `{"kernel_image_path":"/k","kernel_image_path":"/j"}`,
			wantErr: "duplicate field `kernel_image_path`",
		},
		{
			name:    "missing required field",
			into:    func() any { return new(BootSource) },
			body:    `{"boot_args":"x"}`,
			wantErr: "missing field `kernel_image_path`",
		},
		{
			name:    "required field null",
			into:    func() any { return new(BootSource) },
			body:    `{"kernel_image_path":null}`,
			wantErr: "`kernel_image_path` is null: want a string",
		},
		{
			name:    "wrong type",
			into:    func() any { return new(MachineConfig) },
			body:    `{"vcpu_count":"2","mem_size_mib":128}`,
			wantErr: "field `vcpu_count`: got JSON string, want an integer",
		},
		{
			name:    "fraction for integer",
			into:    func() any { return new(MachineConfig) },
			body:    `{"vcpu_count":1.5,"mem_size_mib":128}`,
			wantErr: "field `vcpu_count`",
		},
		{
			name:    "negative CID",
			into:    func() any { return new(Vsock) },
			body:    `{"guest_cid":-3,"uds_path":"/v"}`,
			wantErr: "want a non-negative integer that fits in 32 bits",
		},
		{
			name:    "CID over 32 bits",
			into:    func() any { return new(Vsock) },
			body:    `{"guest_cid":4294967296,"uds_path":"/v"}`,
			wantErr: "field `guest_cid`",
		},
		{
			name:    "required bool missing",
			into:    func() any { return new(Drive) },
			body:    `{"drive_id":"root","path_on_host":"/d"}`,
			wantErr: "missing field `is_root_device`",
		},
		{
			name:    "not implemented field named as such",
			into:    func() any { return new(Drive) },
			body:    `{"drive_id":"root","path_on_host":"/d","is_root_device":true,"rate_limiter":{"bandwidth":{"size":1,"refill_time":100}}}`,
			wantErr: "`rate_limiter` is part of Firecracker's API but not implemented by Thaw: want it absent or null",
		},
		{
			name:    "not implemented field with a value that asks for something",
			into:    func() any { return new(Drive) },
			body:    `{"drive_id":"root","path_on_host":"/d","is_root_device":true,"io_engine":"Async"}`,
			wantErr: "`io_engine` is part of Firecracker's API but not implemented by Thaw: want it absent or null or \"Sync\", got \"Async\"",
		},
		{
			name: "not implemented fields with default values are ignored",
			into: func() any { return new(Drive) },
			body: `{"drive_id":"root","path_on_host":"/d","is_root_device":true,"io_engine":"Sync","rate_limiter":null,"socket":null}`,
			want: &Drive{DriveID: "root", PathOnHost: "/d", IsRootDevice: true},
		},
		{
			name: "inert values are compared compactly",
			into: func() any { return new(Drive) },
			body: `{"drive_id":"root","path_on_host":"/d","is_root_device":true,"rate_limiter":{ }}`,
			want: &Drive{DriveID: "root", PathOnHost: "/d", IsRootDevice: true},
		},
		{
			name:    "not implemented field twice",
			into:    func() any { return new(Drive) },
			body:    `{"drive_id":"root","path_on_host":"/d","is_root_device":true,"socket":null,"socket":null}`,
			wantErr: "duplicate field `socket`",
		},
		{
			name: "load with default clock and huge pages",
			into: func() any { return new(SnapshotLoadParams) },
			body: `{"snapshot_path":"/s","mem_file_path":"/m","clock_realtime":false,"huge_pages":"Snapshot"}`,
			want: &SnapshotLoadParams{SnapshotPath: "/s", MemFilePath: "/m"},
		},
		{
			name:    "load with realtime clock",
			into:    func() any { return new(SnapshotLoadParams) },
			body:    `{"snapshot_path":"/s","mem_file_path":"/m","clock_realtime":true}`,
			wantErr: "`clock_realtime` is part of Firecracker's API but not implemented by Thaw: want it absent or null or false, got true",
		},
		{
			name: "cpu template None",
			into: func() any { return new(MachineConfig) },
			body: `{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"None"}`,
			want: &MachineConfig{VcpuCount: 1, MemSizeMib: 128},
		},
		{
			name:    "cpu template T2",
			into:    func() any { return new(MachineConfig) },
			body:    `{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"T2"}`,
			wantErr: "`cpu_template` is part of Firecracker's API but not implemented by Thaw",
		},
		{
			name:    "validation runs",
			into:    func() any { return new(MachineConfig) },
			body:    `{"vcpu_count":0,"mem_size_mib":128}`,
			wantErr: "vcpu_count is 0: want 1 to 32",
		},
		{
			name: "nested object",
			into: func() any { return new(SnapshotLoadParams) },
			body: `{"snapshot_path":"/s","mem_backend":{"backend_type":"Uffd","backend_path":"/u"},"resume_vm":true,
				"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap1"}],"vsock_override":{"uds_path":"/v2"}}`,
			want: &SnapshotLoadParams{SnapshotPath: "/s", MemBackend: &MemBackend{BackendType: MemBackendUffd, BackendPath: "/u"},
				ResumeVM: true, NetworkOverrides: []NetworkOverride{{IfaceID: "eth0", HostDevName: "tap1"}},
				VsockOverride: &VsockOverride{UDSPath: "/v2"}},
		},
		{
			name:    "unknown field in nested object",
			into:    func() any { return new(SnapshotLoadParams) },
			body:    `{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m","extra":1}}`,
			wantErr: "`mem_backend`: unknown field `extra`",
		},
		{
			name:    "missing field in array element",
			into:    func() any { return new(SnapshotLoadParams) },
			body:    `{"snapshot_path":"/s","mem_file_path":"/m","network_overrides":[{"iface_id":"eth0"}]}`,
			wantErr: "`network_overrides[0]`: missing field `host_dev_name`",
		},
		{
			name:    "null array element",
			into:    func() any { return new(SnapshotLoadParams) },
			body:    `{"snapshot_path":"/s","mem_file_path":"/m","network_overrides":[null]}`,
			wantErr: "`network_overrides[0]` is null",
		},
		{
			name:    "object where array wanted",
			into:    func() any { return new(SnapshotLoadParams) },
			body:    `{"snapshot_path":"/s","mem_file_path":"/m","network_overrides":{}}`,
			wantErr: "`network_overrides`: got JSON object, want an array",
		},
		{
			name:    "array where object wanted",
			into:    func() any { return new(BootSource) },
			body:    `[1,2]`,
			wantErr: "the body: got JSON array, want an object",
		},
		{
			name:    "null body",
			into:    func() any { return new(BootSource) },
			body:    `null`,
			wantErr: "the body is null",
		},
		{
			name:    "empty body",
			into:    func() any { return new(BootSource) },
			body:    " \n",
			wantErr: "the body is empty",
		},
		{
			name:    "trailing data",
			into:    func() any { return new(VM) },
			body:    `{"state":"Paused"} {}`,
			wantErr: "trailing characters",
		},
		{
			name:    "truncated",
			into:    func() any { return new(VM) },
			body:    `{"state":"Pau`,
			wantErr: "truncated",
		},
		{
			name:    "syntax error",
			into:    func() any { return new(VM) },
			body:    `{"state" "Paused"}`,
			wantErr: "invalid JSON",
		},
		{
			name:    "invalid UTF-8",
			into:    func() any { return new(BootSource) },
			body:    "{\"kernel_image_path\":\"\xff\"}",
			wantErr: "not valid UTF-8",
		},
		{
			name:    "unknown enum value",
			into:    func() any { return new(InstanceActionInfo) },
			body:    `{"action_type":"Reboot"}`,
			wantErr: `action_type is "Reboot": want one of "FlushMetrics", "InstanceStart", "SendCtrlAltDel"`,
		},
		{
			name: "unknown fields inside skipped scalars are not fields",
			into: func() any { return new(BootSource) },
			body: `{"kernel_image_path":"{\"x\":1}"}`,
			want: &BootSource{KernelImagePath: `{"x":1}`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := tt.into()
			err := Decode([]byte(tt.body), v)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Decode(%s) error = %v, want it to contain %q", tt.body, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode(%s): %v", tt.body, err)
			}
			if !reflect.DeepEqual(v, tt.want) {
				t.Errorf("Decode(%s) = %+v, want %+v", tt.body, v, tt.want)
			}
		})
	}
}

func TestDecodeNeedsPointer(t *testing.T) {
	if err := Decode([]byte(`{}`), BootSource{}); err == nil {
		t.Fatal("Decode into a non-pointer succeeded, want an error")
	}
}
