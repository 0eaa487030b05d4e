package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/thawvm/thaw/internal/uffd"
)

// PageSource returns the page servers' counters of the sandboxes running
// now (the shims' GET /stats).
type PageSource func(ctx context.Context) []uffd.Stats

// SetPageSource adds the page-server metrics, read from src at each
// scrape. Call it once.
func (m *Metrics) SetPageSource(src PageSource) {
	m.reg.MustRegister(&pageCollector{src: src})
}

var (
	pageServersDesc = prometheus.NewDesc("thaw_uffd_page_servers", "Running sandboxes whose memory a page server serves.", nil, nil)
	faultsDesc      = prometheus.NewDesc("thaw_uffd_faults", "Page faults served, summed over the running sandboxes' page servers (drops when a sandbox goes away).", nil, nil)
	faultPagesDesc  = prometheus.NewDesc("thaw_uffd_fault_pages", "Pages installed to answer faults, summed over the running sandboxes.", nil, nil)
	zeroPagesDesc   = prometheus.NewDesc("thaw_uffd_zero_pages", "All-zero pages mapped as the shared zero page, summed over the running sandboxes.", nil, nil)
	prefetchedDesc  = prometheus.NewDesc("thaw_uffd_prefetched_pages", "Pages installed by the prefetcher, summed over the running sandboxes.", nil, nil)
	latencyDesc     = prometheus.NewDesc("thaw_uffd_fault_latency_seconds",
		"Fault service time (read of the fault to the end of its copy or wake) over the running sandboxes' page servers; the sum is estimated from bucket midpoints.", nil, nil)
)

// pageCollector reads the page servers at scrape time.
type pageCollector struct {
	src PageSource
}

func (c *pageCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{pageServersDesc, faultsDesc, faultPagesDesc, zeroPagesDesc, prefetchedDesc, latencyDesc} {
		ch <- d
	}
}

// scrapeTimeout bounds how long a scrape waits for the shims.
const scrapeTimeout = 5 * time.Second

func (c *pageCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	all := c.src(ctx)
	var faults, faultPages, zero, prefetched uint64
	var lat uffd.Histogram
	for _, s := range all {
		faults += s.Faults
		faultPages += s.FaultPages
		zero += s.ZeroPages
		prefetched += s.PrefetchedPages
		for i, n := range s.Latency.Buckets {
			lat.Buckets[i] += n
		}
	}
	gauge := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	gauge(pageServersDesc, uint64(len(all)))
	gauge(faultsDesc, faults)
	gauge(faultPagesDesc, faultPages)
	gauge(zeroPagesDesc, zero)
	gauge(prefetchedDesc, prefetched)
	count, sum, buckets := latencyHistogram(lat)
	ch <- prometheus.MustNewConstHistogram(latencyDesc, count, sum, buckets)
}

// latencyHistogram converts uffd's power-of-two buckets (bucket 0: under
// 256 ns; bucket k: [256·2^(k-1), 256·2^k) ns; the last also holds
// everything longer) to Prometheus' cumulative upper bounds in seconds.
func latencyHistogram(h uffd.Histogram) (count uint64, sum float64, buckets map[float64]uint64) {
	buckets = make(map[float64]uint64, uffd.HistogramBuckets-1)
	for k, n := range h.Buckets {
		count += n
		upper := float64(uint64(256)<<k) / 1e9
		lower := 0.0
		if k > 0 {
			lower = float64(uint64(256)<<(k-1)) / 1e9
		}
		sum += float64(n) * (lower + upper) / 2
		if k < uffd.HistogramBuckets-1 {
			buckets[upper] = count
		}
	}
	return count, sum, buckets
}
