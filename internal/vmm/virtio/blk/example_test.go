package blk_test

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio"
	"github.com/thawvm/thaw/internal/vmm/virtio/blk"
)

// memory stands in for the VMM's guest memory (internal/vmm/memory).
type memory []byte

func (m memory) Slice(gpa, n uint64) ([]byte, error) {
	if gpa+n < gpa || gpa+n > uint64(len(m)) {
		return nil, fmt.Errorf("[%#x, +%#x) outside RAM", gpa, n)
	}
	return m[gpa : gpa+n], nil
}

// irq stands in for the device's irqfd.
type irq struct{}

func (irq) Trigger() error { return nil }

// Example shows how the VMM wires a drive: build the device from the API's
// drive config, wrap it in a virtio-mmio transport, put the transport on
// the MMIO bus (its Read and Write take offsets inside the 4 KiB window),
// and close the transport when the VM is gone.
func Example() {
	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "rootfs.ext4")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o644); err != nil {
		fmt.Println(err)
		return
	}

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	dev, err := blk.New(blk.Config{ID: "rootfs", Path: path, Root: true}, log)
	if err != nil {
		fmt.Println(err)
		return
	}
	window := virtio.NewMMIO(dev, make(memory, 1<<20), irq{}, log)
	defer window.Close()

	// What the guest's virtio-mmio driver reads first, and the capacity.
	b := make([]byte, 8)
	window.Read(abi.MMIOMagicValue, b[:4])
	window.Read(abi.MMIODeviceID, b[4:])
	fmt.Printf("magic %q, device id %d\n", b[:4], binary.LittleEndian.Uint32(b[4:]))
	window.Read(abi.MMIOConfig+abi.BlkConfigOffCapacity, b)
	fmt.Println("sectors:", binary.LittleEndian.Uint64(b), "root:", dev.Config().Root)
	// Output:
	// magic "virt", device id 2
	// sectors: 2048 root: true
}
