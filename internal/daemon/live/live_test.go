package live

import (
	"context"
	"testing"

	"github.com/thawvm/thaw/internal/daemon/config"
)

func TestSettings(t *testing.T) {
	cfg := config.Default()
	cfg.UFFD, cfg.MaxConcurrentRestores = false, 3
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if s.UFFD() {
		t.Error("UFFD() = true, want the configured false")
	}
	s.SetUFFD(true)
	if !s.UFFD() {
		t.Error("after SetUFFD(true): UFFD() = false")
	}
	if got := s.Slots().Stats().Limit; got != 3 {
		t.Errorf("slot limit = %d, want 3", got)
	}
	sl, err := s.Slots().Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sl.Release()
	cfg.MaxConcurrentRestores = 0
	if _, err := New(cfg); err == nil {
		t.Error("New with 0 restore slots succeeded")
	}
}
