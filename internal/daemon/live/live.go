// Package live holds the thawd settings that can change while it runs,
// through the API and without a restart: whether new sandboxes restore
// through the userfaultfd page server, and how many restores may run at
// once. Running sandboxes keep what they started with; only later creates
// see a change. Changes are not persisted: the configuration is the truth
// at the next start.
package live

import (
	"sync/atomic"

	"github.com/thawvm/thaw/internal/daemon/config"
	"github.com/thawvm/thaw/internal/daemon/slots"
)

// Settings are the run-time switches. Safe for concurrent use.
type Settings struct {
	uffd  atomic.Bool
	slots *slots.Slots
}

// New returns settings starting from cfg, with restore slots bounded at
// cfg.MaxConcurrentRestores.
func New(cfg config.Config) (*Settings, error) {
	sl, err := slots.New(cfg.MaxConcurrentRestores)
	if err != nil {
		return nil, err
	}
	s := &Settings{slots: sl}
	s.uffd.Store(cfg.UFFD)
	return s, nil
}

// UFFD reports whether new sandboxes restore through the page server.
func (s *Settings) UFFD() bool { return s.uffd.Load() }

// SetUFFD switches the page server on or off for sandboxes created from now
// on.
func (s *Settings) SetUFFD(on bool) { s.uffd.Store(on) }

// Slots returns the restore slots, which Resize changes in place.
func (s *Settings) Slots() *slots.Slots { return s.slots }
