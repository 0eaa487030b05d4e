package store

import (
	"fmt"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
)

// BenchmarkSandboxLifecycle measures the store's share of a sandbox's life:
// the four committed (fsynced) changes of create, running, stopping and
// delete. It runs one caller, and 16 concurrent callers (as concurrent
// creates would), each with every change committed alone ("solo") and the
// store's default ("shared": a change that finds others under way shares
// their commit), side by side on the test's temporary directory. ns/op is
// per sandbox.
func BenchmarkSandboxLifecycle(b *testing.B) {
	for _, mode := range []struct {
		name string
		solo bool
	}{{"solo", true}, {"shared", false}} {
		b.Run(mode.name+"/callers=1", func(b *testing.B) {
			s, next := benchStore(b, mode.solo)
			for b.Loop() {
				if err := lifecycle(s, next()); err != nil {
					b.Fatal(err)
				}
			}
		})
		const callers = 16
		b.Run(fmt.Sprintf("%s/callers=%d", mode.name, callers), func(b *testing.B) {
			s, next := benchStore(b, mode.solo)
			b.SetParallelism(max(1, callers/runtime.GOMAXPROCS(0)))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := lifecycle(s, next()); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func benchStore(b *testing.B, solo bool) (*Store, func() string) {
	s, err := Open(filepath.Join(b.TempDir(), "thawd.db"), Options{solo: solo})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	if err := s.CreateTemplate(newTemplate("py", readyBuild("b1"))); err != nil {
		b.Fatal(err)
	}
	var n atomic.Int64
	return s, func() string { return fmt.Sprintf("sb%d", n.Add(1)) }
}

func lifecycle(s *Store, id string) error {
	if err := s.CreateSandbox(newSandbox(id, "py", "b1")); err != nil {
		return err
	}
	if _, err := s.UpdateSandbox(id, func(sb *Sandbox) error { sb.State, sb.Shim = Running, liveShim; return nil }); err != nil {
		return err
	}
	if _, err := s.UpdateSandbox(id, func(sb *Sandbox) error { sb.State = Stopping; return nil }); err != nil {
		return err
	}
	return s.DeleteSandbox(id)
}
