package fcapi

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	okDrive := Drive{DriveID: "rootfs", PathOnHost: "/d", IsRootDevice: true}
	okLoad := SnapshotLoadParams{SnapshotPath: "/s", MemBackend: &MemBackend{BackendType: MemBackendFile, BackendPath: "/m"}}
	tests := []struct {
		name    string
		v       Validator
		wantErr string // "" means valid
	}{
		{"boot source", BootSource{KernelImagePath: "/k", BootArgs: "console=ttyS0 reboot=k"}, ""},
		{"boot source without kernel", BootSource{}, "kernel_image_path is empty"},
		{"boot args with newline", BootSource{KernelImagePath: "/k", BootArgs: "a\nb"}, "byte 0x0a at offset 1"},
		{"boot args too long", BootSource{KernelImagePath: "/k", BootArgs: strings.Repeat("a", MaxBootArgsLen+1)}, "want at most 2047"},
		{"default machine", DefaultMachineConfig(), ""},
		{"32 vcpus", MachineConfig{VcpuCount: 32, MemSizeMib: 1}, ""},
		{"33 vcpus", MachineConfig{VcpuCount: 33, MemSizeMib: 128}, "vcpu_count is 33: want 1 to 32"},
		{"negative vcpus", MachineConfig{VcpuCount: -1, MemSizeMib: 128}, "vcpu_count is -1"},
		{"smt odd", MachineConfig{VcpuCount: 3, MemSizeMib: 128, SMT: true}, "want 1 or an even number"},
		{"smt one", MachineConfig{VcpuCount: 1, MemSizeMib: 128, SMT: true}, ""},
		{"zero memory", MachineConfig{VcpuCount: 1}, "mem_size_mib is 0"},
		{"2M odd memory", MachineConfig{VcpuCount: 1, MemSizeMib: 129, HugePages: HugePages2M}, "want a multiple of 2"},
		{"bad huge pages", MachineConfig{VcpuCount: 1, MemSizeMib: 128, HugePages: "1G"}, `huge_pages is "1G"`},
		{"drive", okDrive, ""},
		{"drive bad id", Drive{DriveID: "root-fs", PathOnHost: "/d"}, `drive_id: the ID "root-fs" has '-'`},
		{"drive empty id", Drive{PathOnHost: "/d"}, "drive_id: the ID is empty"},
		{"drive unicode id", Drive{DriveID: "dísco_1", PathOnHost: "/d"}, ""},
		{"drive no path", Drive{DriveID: "d"}, "path_on_host is empty"},
		{"drive bad cache", Drive{DriveID: "d", PathOnHost: "/d", CacheType: "None"}, `cache_type is "None"`},
		{"partial drive", PartialDrive{DriveID: "rootfs", PathOnHost: "/sandbox/d"}, ""},
		{"partial drive bad id", PartialDrive{DriveID: "root-fs", PathOnHost: "/d"}, `drive_id: the ID "root-fs" has '-'`},
		{"partial drive no path", PartialDrive{DriveID: "rootfs"}, "path_on_host is empty"},
		{"vsock", Vsock{GuestCID: 3, UDSPath: "/v"}, ""},
		{"vsock reserved cid", Vsock{GuestCID: 2, UDSPath: "/v"}, "guest_cid is 2: want at least 3"},
		{"vsock no path", Vsock{GuestCID: 3}, "uds_path is empty"},
		{"net", NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "06:00:AC:10:00:02"}, ""},
		{"net long tap", NetworkInterface{IfaceID: "eth0", HostDevName: "tap0123456789abcd"}, "1 to 15 bytes"},
		{"net bad mac", NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "0600.ac10.0002"}, "guest_mac"},
		{"action", InstanceActionInfo{ActionType: ActionInstanceStart}, ""},
		{"no action", InstanceActionInfo{}, `action_type is ""`},
		{"vm", VM{State: VMPaused}, ""},
		{"vm bad", VM{State: "Running"}, `state is "Running": want "Paused" or "Resumed"`},
		{"create", SnapshotCreateParams{SnapshotPath: "/s", MemFilePath: "/m"}, ""},
		{"create diff", SnapshotCreateParams{SnapshotType: SnapshotDiff, SnapshotPath: "/s", MemFilePath: "/m"}, ""},
		{"create bad type", SnapshotCreateParams{SnapshotType: "full", SnapshotPath: "/s", MemFilePath: "/m"}, `snapshot_type is "full"`},
		{"create no mem", SnapshotCreateParams{SnapshotPath: "/s"}, "mem_file_path is empty"},
		{"load", okLoad, ""},
		{"load deprecated", SnapshotLoadParams{SnapshotPath: "/s", MemFilePath: "/m"}, ""},
		{"load both", SnapshotLoadParams{SnapshotPath: "/s", MemFilePath: "/m", MemBackend: okLoad.MemBackend}, "too many fields"},
		{"load neither", SnapshotLoadParams{SnapshotPath: "/s"}, "missing field: either mem_backend or mem_file_path"},
		{"load bad backend", SnapshotLoadParams{SnapshotPath: "/s", MemBackend: &MemBackend{BackendType: "uffd", BackendPath: "/u"}}, `backend_type is "uffd"`},
		{"load dup override", SnapshotLoadParams{SnapshotPath: "/s", MemFilePath: "/m",
			NetworkOverrides: []NetworkOverride{{"a", "t1"}, {"a", "t2"}}}, `iface_id "a" appears twice`},
		{"load empty vsock override", SnapshotLoadParams{SnapshotPath: "/s", MemFilePath: "/m", VsockOverride: &VsockOverride{}}, "vsock_override.uds_path is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.v.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Validate(%+v) = %v, want nil", tt.v, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Validate(%+v) = %v, want an error containing %q", tt.v, err, tt.wantErr)
			}
		})
	}
}

func TestSnapshotLoadNormalized(t *testing.T) {
	p := SnapshotLoadParams{SnapshotPath: "/s", MemFilePath: "/m", EnableDiffSnapshots: true}
	got := p.Normalized()
	want := SnapshotLoadParams{SnapshotPath: "/s", MemBackend: &MemBackend{BackendType: MemBackendFile, BackendPath: "/m"}, TrackDirtyPages: true}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Normalized() = %+v, want %+v", got, want)
	}
	q := SnapshotLoadParams{SnapshotPath: "/s", MemBackend: &MemBackend{BackendType: MemBackendUffd, BackendPath: "/u"}}
	n := q.Normalized()
	n.MemBackend.BackendPath = "/changed"
	if q.MemBackend.BackendPath != "/u" {
		t.Errorf("Normalized shares MemBackend with its receiver: original changed to %q", q.MemBackend.BackendPath)
	}
}

func TestSnapshotCreateType(t *testing.T) {
	if got := (SnapshotCreateParams{}).Type(); got != SnapshotFull {
		t.Errorf("default Type() = %q, want %q", got, SnapshotFull)
	}
}

// TestWireNames pins the JSON encoding of every body to Firecracker's field
// names, so a rename of a Go field cannot change the wire format.
func TestWireNames(t *testing.T) {
	tests := []struct {
		v    any
		want string
	}{
		{BootSource{KernelImagePath: "/k"}, `{"kernel_image_path":"/k"}`},
		{BootSource{KernelImagePath: "/k", BootArgs: "a", InitrdPath: "/i"}, `{"kernel_image_path":"/k","boot_args":"a","initrd_path":"/i"}`},
		{MachineConfig{VcpuCount: 2, MemSizeMib: 256}, `{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":false}`},
		{DefaultMachineConfig(), `{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}`},
		{Drive{DriveID: "r", PathOnHost: "/d"}, `{"drive_id":"r","path_on_host":"/d","is_root_device":false}`},
		{Drive{DriveID: "r", PathOnHost: "/d", IsRootDevice: true, IsReadOnly: true, PartUUID: "p", CacheType: CacheWriteback},
			`{"drive_id":"r","path_on_host":"/d","is_root_device":true,"is_read_only":true,"partuuid":"p","cache_type":"Writeback"}`},
		{Vsock{GuestCID: 3, UDSPath: "/v"}, `{"guest_cid":3,"uds_path":"/v"}`},
		{NetworkInterface{IfaceID: "e", HostDevName: "t", GuestMAC: "m"}, `{"iface_id":"e","host_dev_name":"t","guest_mac":"m"}`},
		{InstanceActionInfo{ActionType: ActionSendCtrlAltDel}, `{"action_type":"SendCtrlAltDel"}`},
		{VM{State: VMResumed}, `{"state":"Resumed"}`},
		{InstanceInfo{AppName: "a", ID: "i", State: StateNotStarted, VMMVersion: "v"}, `{"app_name":"a","id":"i","state":"Not started","vmm_version":"v"}`},
		{SnapshotCreateParams{SnapshotPath: "/s", MemFilePath: "/m"}, `{"snapshot_path":"/s","mem_file_path":"/m"}`},
		{SnapshotLoadParams{SnapshotPath: "/s", MemBackend: &MemBackend{MemBackendUffd, "/u"}, ResumeVM: true, VsockOverride: &VsockOverride{"/v"}},
			`{"snapshot_path":"/s","mem_backend":{"backend_type":"Uffd","backend_path":"/u"},"resume_vm":true,"vsock_override":{"uds_path":"/v"}}`},
		{Error{FaultMessage: "x"}, `{"fault_message":"x"}`},
		{Version{FirecrackerVersion: "1"}, `{"firecracker_version":"1"}`},
	}
	for _, tt := range tests {
		got, err := json.Marshal(tt.v)
		if err != nil {
			t.Fatalf("Marshal(%+v): %v", tt.v, err)
		}
		if string(got) != tt.want {
			t.Errorf("Marshal(%T) = %s, want %s", tt.v, got, tt.want)
		}
	}
}
