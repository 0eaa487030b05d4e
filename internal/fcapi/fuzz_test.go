package fcapi

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// bodyTypes returns a fresh value of every type Decode is used on.
func bodyTypes() []any {
	return []any{
		new(BootSource), new(MachineConfig), new(Drive), new(Vsock), new(NetworkInterface),
		new(InstanceActionInfo), new(VM), new(SnapshotCreateParams), new(SnapshotLoadParams), new(VMConfig),
	}
}

// FuzzDecode feeds arbitrary bytes to Decode for every body type. Decode
// must not panic, and whatever it accepts must survive a round trip: encode
// it, decode it again (strictly), and get the same encoding.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"kernel_image_path":"/k","boot_args":"console=ttyS0"}`,
		`{"vcpu_count":2,"mem_size_mib":128,"smt":true,"huge_pages":"2M"}`,
		`{"drive_id":"rootfs","path_on_host":"/r","is_root_device":true,"cache_type":"Writeback"}`,
		`{"guest_cid":3,"uds_path":"/v"}`,
		`{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:00:00:00:01"}`,
		`{"action_type":"InstanceStart"}`,
		`{"state":"Paused"}`,
		`{"snapshot_type":"Full","snapshot_path":"/s","mem_file_path":"/m"}`,
		`{"snapshot_path":"/s","mem_backend":{"backend_type":"Uffd","backend_path":"/u"},"network_overrides":[{"iface_id":"a","host_dev_name":"b"}]}`,
		firecrackerConfig,
		`{"a":{"b":[1,{"c":null}]}}`,
		`[`, `{"state":"Paused"}}`, `{"state":"Paused","state":"Resumed"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, v := range bodyTypes() {
			if err := Decode(data, v); err != nil {
				continue
			}
			enc, err := json.Marshal(v)
			if err != nil {
				t.Fatalf("%T accepted %q but does not encode: %v", v, data, err)
			}
			again := reflect.New(reflect.TypeOf(v).Elem()).Interface()
			if err := Decode(enc, again); err != nil {
				t.Fatalf("%T accepted %q, encoded it as %s, and rejects that: %v", v, data, enc, err)
			}
			enc2, _ := json.Marshal(again)
			if !bytes.Equal(enc, enc2) {
				t.Fatalf("%T round trip changed %s into %s", v, enc, enc2)
			}
		}
	})
}
