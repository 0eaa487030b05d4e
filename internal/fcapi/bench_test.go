package fcapi

import "testing"

func BenchmarkDecode(b *testing.B) {
	bodies := []struct {
		name string
		body string
		into func() any
	}{
		{"SnapshotLoadParams", `{"snapshot_path":"/var/lib/thaw/templates/t/vmstate","mem_backend":{"backend_type":"Uffd","backend_path":"/run/thaw/sb/uffd.sock"},"resume_vm":true,"vsock_override":{"uds_path":"/run/thaw/sb/v.sock"}}`,
			func() any { return new(SnapshotLoadParams) }},
		{"VMConfig", firecrackerConfig, func() any { return new(VMConfig) }},
	}
	for _, bb := range bodies {
		b.Run(bb.name, func(b *testing.B) {
			data := []byte(bb.body)
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if err := Decode(data, bb.into()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
