package sandbox_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/thawvm/thaw/internal/daemon/sandbox"
	"github.com/thawvm/thaw/internal/daemon/sandbox/sandboxtest"
	"github.com/thawvm/thaw/internal/daemon/store"
)

// BenchmarkCreate measures create latency (Manager.Create called → the
// probe's ready marker seen) with the real shim and thaw-vmm, for each
// memory backend on the same template, alone and with concurrent creates.
// Each iteration creates `concurrent` sandboxes at once and deletes them;
// p50 and p99 are over every create of the run. Run with
//
//	go test -run '^$' -bench BenchmarkCreate -benchtime 20x ./internal/daemon/sandbox/
func BenchmarkCreate(b *testing.B) {
	for _, backend := range []string{"uffd-prefetch", "uffd-ondemand", "file"} {
		for _, concurrent := range []int{1, 4} {
			b.Run(fmt.Sprintf("%s/concurrent=%d", backend, concurrent), func(b *testing.B) {
				e := newEnv(b, func(o *sandbox.Options) { o.Prefetch = backend == "uffd-prefetch"; o.RecordMax = 3 * time.Second })
				e.settings.SetUFFD(backend != "file")
				e.registerSnapshot(b, "rec", probeSnapshot(b), store.ReadyCheck{Kind: store.ReadySerial, Marker: sandboxtest.ReadyMarker}, true)
				var lat []time.Duration
				var mu sync.Mutex
				b.ResetTimer()
				for i := range b.N {
					var wg sync.WaitGroup
					ids := make([]string, concurrent)
					for j := range concurrent {
						ids[j] = fmt.Sprintf("b%d-%d", i, j)
						wg.Add(1)
						go func() {
							defer wg.Done()
							start := time.Now()
							if _, err := e.m.Create(context.Background(), sandbox.CreateRequest{ID: ids[j], Template: "rec"}); err != nil {
								b.Error(err)
								return
							}
							mu.Lock()
							lat = append(lat, time.Since(start))
							mu.Unlock()
						}()
					}
					wg.Wait()
					b.StopTimer()
					for _, id := range ids {
						e.m.Delete(context.Background(), id)
					}
					b.StartTimer()
				}
				slices.Sort(lat)
				if len(lat) > 0 {
					b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
					b.ReportMetric(float64(lat[(len(lat)*99)/100].Microseconds())/1000, "p99-ms")
				}
			})
		}
	}
}
