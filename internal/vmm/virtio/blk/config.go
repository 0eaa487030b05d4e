// Package blk is the virtio-blk device (virtio 1.2 spec 5.2) backed by a
// plain file: reads and writes are pread/pwrite straight between the file
// and guest memory, flush is fdatasync, GET_ID answers the drive's ID, and
// read-only drives refuse writes with VIRTIO_BLK_S_IOERR.
//
// The device starts no goroutines: requests are served on the vCPU thread
// that notifies the queue (the transport's Notify), as Firecracker's block
// device serves them on its event loop. A guest's bad request gets an error
// status in its status byte; a request so broken it has no status byte is
// returned with zero length and logged. Close closes the backing file.
package blk

import (
	"errors"
	"fmt"
	"strings"
)

// Config is the drive the API asked for (Firecracker's PUT /drives/{id}).
type Config struct {
	// ID is the drive_id; GET_ID answers its first 20 bytes.
	ID string
	// Path is the backing file (path_on_host).
	Path string
	// ReadOnly opens Path read-only and offers VIRTIO_BLK_F_RO.
	ReadOnly bool
	// Root marks the root device. The device itself ignores it; the VMM
	// uses it to put root=/dev/vdX on the kernel command line.
	Root bool
}

// Validate reports what is wrong with c.
func (c Config) Validate() error {
	var errs []error
	if strings.TrimSpace(c.ID) == "" {
		errs = append(errs, errors.New("drive ID is empty; give each drive a name (drive_id)"))
	}
	if c.Path == "" {
		errs = append(errs, fmt.Errorf("drive %q has no backing file; set path_on_host", c.ID))
	}
	return errors.Join(errs...)
}
