package blk

import (
	"fmt"
	"log/slog"

	abi "github.com/thawvm/thaw/internal/abi/virtio"
)

// State is the block device's guest-visible state, plain data for
// snapshots: what the guest was told about the drive.
type State struct {
	ID       string `json:"id"`
	ReadOnly bool   `json:"read_only"`
	Root     bool   `json:"root"`
	Sectors  uint64 `json:"sectors"`
}

// State returns the device's snapshot state.
func (d *Device) State() State {
	return State{ID: d.cfg.ID, ReadOnly: d.cfg.ReadOnly, Root: d.cfg.Root, Sectors: d.sectors}
}

// Restore rebuilds a device from st, backed by cfg.Path (the drive may have
// moved since the snapshot). The guest keeps the capacity it was told, so
// the file must still hold that many sectors, and the drive's ID and
// read-only flag must not change under the guest.
func Restore(cfg Config, st State, log *slog.Logger) (*Device, error) {
	if cfg.ID != st.ID || cfg.ReadOnly != st.ReadOnly {
		return nil, fmt.Errorf("restoring drive %q: config (id %q, read-only %v) differs from the snapshot's (id %q, read-only %v)",
			st.ID, cfg.ID, cfg.ReadOnly, st.ID, st.ReadOnly)
	}
	d, err := New(cfg, log)
	if err != nil {
		return nil, fmt.Errorf("restoring drive %q: %w", st.ID, err)
	}
	if d.sectors < st.Sectors {
		d.Close()
		return nil, fmt.Errorf("restoring drive %q: %s holds %d sectors, the guest was told %d; give the snapshot's drive file back",
			st.ID, cfg.Path, d.sectors, st.Sectors)
	}
	d.sectors = st.Sectors
	return d, nil
}

// SetPath switches the drive to another backing file (Firecracker's PATCH
// /drives/{drive_id}), opened as the drive was (read-only or not). The
// guest keeps the capacity it was told, so path must hold at least that
// many sectors; requests in flight finish on the old file, which is then
// closed.
func (d *Device) SetPath(path string) error {
	nd, err := New(Config{ID: d.cfg.ID, Path: path, ReadOnly: d.cfg.ReadOnly, Root: d.cfg.Root}, d.log)
	if err != nil {
		return err
	}
	if nd.sectors < d.sectors {
		nd.Close()
		return fmt.Errorf("drive %q: %s holds %d sectors, the guest was told %d (%d bytes); thaw-vmm does not resize drives, give a file at least that large",
			d.cfg.ID, path, nd.sectors, d.sectors, d.sectors*abi.BlkSectorSize)
	}
	d.mu.Lock()
	old := d.file
	d.file, d.cfg.Path = nd.file, path
	d.mu.Unlock()
	if err := old.Close(); err != nil {
		return fmt.Errorf("closing drive %q's old file: %w", d.cfg.ID, err)
	}
	return nil
}
