package fcapi

import (
	"reflect"
	"strings"
	"testing"
)

// A config file in the shape firecracker exports (GET /vm/config) and its
// tests use: every section spelled out, unused ones null or empty.
const firecrackerConfig = `{
  "boot-source": {
    "kernel_image_path": "vmlinux.bin",
    "boot_args": "console=ttyS0 reboot=k panic=1 pci=off",
    "initrd_path": null
  },
  "drives": [
    {
      "drive_id": "rootfs",
      "partuuid": null,
      "is_root_device": true,
      "cache_type": "Unsafe",
      "is_read_only": false,
      "path_on_host": "bionic.rootfs.ext4",
      "io_engine": "Sync",
      "rate_limiter": null,
      "socket": null
    },
    {
      "drive_id": "scratch",
      "is_root_device": false,
      "is_read_only": true,
      "path_on_host": "scratch.ext4"
    }
  ],
  "machine-config": {
    "vcpu_count": 2,
    "mem_size_mib": 1024,
    "smt": false,
    "track_dirty_pages": false,
    "huge_pages": "None"
  },
  "vsock": {"guest_cid": 3, "uds_path": "./v.sock"},
  "network-interfaces": [],
  "cpu-config": null,
  "balloon": null,
  "logger": null,
  "metrics": null,
  "mmds-config": null,
  "entropy": null,
  "pmem": [],
  "memory-hotplug": null
}`

func TestParseConfigFile(t *testing.T) {
	got, err := ParseConfigFile([]byte(firecrackerConfig))
	if err != nil {
		t.Fatalf("ParseConfigFile: %v", err)
	}
	want := &VMConfig{
		BootSource: BootSource{KernelImagePath: "vmlinux.bin", BootArgs: "console=ttyS0 reboot=k panic=1 pci=off"},
		Drives: []Drive{
			{DriveID: "rootfs", IsRootDevice: true, CacheType: CacheUnsafe, PathOnHost: "bionic.rootfs.ext4"},
			{DriveID: "scratch", IsReadOnly: true, PathOnHost: "scratch.ext4"},
		},
		MachineConfig:     &MachineConfig{VcpuCount: 2, MemSizeMib: 1024, HugePages: HugePagesNone},
		Vsock:             &Vsock{GuestCID: 3, UDSPath: "./v.sock"},
		NetworkInterfaces: []NetworkInterface{},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseConfigFile = %+v, want %+v", got, want)
	}
}

func TestParseConfigFileErrors(t *testing.T) {
	const boot = `"boot-source":{"kernel_image_path":"/k"}`
	tests := []struct {
		name, doc, wantErr string
	}{
		{"minimal", `{` + boot + `,"drives":[]}`, ""},
		{"no drives key", `{` + boot + `}`, "missing field `drives`"},
		{"no boot source", `{"drives":[]}`, "missing field `boot-source`"},
		{"snake case section", `{"boot_source":{"kernel_image_path":"/k"},"drives":[]}`, "unknown field `boot_source`"},
		{"logger section", `{` + boot + `,"drives":[],"logger":{"level":"Info"}}`, "`logger` is part of Firecracker's API but not implemented by Thaw"},
		{"pmem device", `{` + boot + `,"drives":[],"pmem":[{"id":"p","path_on_host":"/p"}]}`, "`pmem` is part of Firecracker's API"},
		{"empty sections", `{` + boot + `,"drives":[],"pmem":[],"balloon":null,"logger":null}`, ""},
		{"balloon section", `{` + boot + `,"drives":[],"balloon":{"amount_mib":1,"deflate_on_oom":true}}`, "`balloon` is part of Firecracker's API"},
		{"bad drive field", `{` + boot + `,"drives":[{"drive_id":"a","is_root_device":false,"path_on_host":"/a","io_engine":"Async"}]}`,
			"`drives[0].io_engine` is part of Firecracker's API"},
		{"two roots", `{` + boot + `,"drives":[{"drive_id":"a","is_root_device":true,"path_on_host":"/a"},{"drive_id":"b","is_root_device":true,"path_on_host":"/b"}]}`,
			`drive "a" and drive "b" are both root devices`},
		{"same drive twice", `{` + boot + `,"drives":[{"drive_id":"a","is_root_device":false,"path_on_host":"/a"},{"drive_id":"a","is_root_device":false,"path_on_host":"/b"}]}`,
			`drive_id "a" appears twice`},
		{"bad machine", `{` + boot + `,"drives":[],"machine-config":{"vcpu_count":64,"mem_size_mib":128}}`, "machine-config: vcpu_count is 64"},
		{"machine without memory", `{` + boot + `,"drives":[],"machine-config":{"vcpu_count":1}}`, "`machine-config`: missing field `mem_size_mib`"},
		{"bad vsock", `{` + boot + `,"drives":[],"vsock":{"guest_cid":1,"uds_path":"/v"}}`, "vsock: guest_cid is 1"},
		{"same iface twice", `{` + boot + `,"drives":[],"network-interfaces":[{"iface_id":"e","host_dev_name":"t"},{"iface_id":"e","host_dev_name":"u"}]}`,
			`iface_id "e" appears twice`},
		{"bad boot source", `{"boot-source":{"kernel_image_path":""},"drives":[]}`, "boot-source: kernel_image_path is empty"},
		{"not an object", `"hello"`, "got JSON string, want an object"},
		{"too large", `{` + boot + `,"drives":[]}` + strings.Repeat(" ", MaxConfigFileSize), "want at most 1048576"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfigFile([]byte(tt.doc))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("ParseConfigFile: %v, want no error", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("ParseConfigFile error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}
