package sandbox

import (
	"context"

	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/shim"
)

// Pages asks the shim of sb for its page server's prefetch mode and
// counters (GET /stats). ok is false when sb is not running with a page
// server, or its shim does not answer before ctx ends: inspect then shows
// the record alone.
func (m *Manager) Pages(ctx context.Context, sb store.Sandbox) (ps shim.PageStats, ok bool) {
	if sb.State != store.Running || !sb.UFFD || sb.Shim.ControlSocket == "" {
		return shim.PageStats{}, false
	}
	c := shim.NewClient(sb.Shim.ControlSocket)
	defer c.Close()
	ps, err := c.Stats(ctx)
	if err != nil || !ps.Serving {
		return shim.PageStats{}, false
	}
	return ps, true
}
