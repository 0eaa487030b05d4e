// Package metrics defines thawd's Prometheus metrics and serves them: the
// state of the store (sandboxes and template builds by state) and of the
// restore slots, read at scrape time so they can never drift from the
// truth, and histograms of sandbox creates by phase, observed by whoever
// runs a create. Metric names start with thaw_.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/thawvm/thaw/internal/daemon/live"
	"github.com/thawvm/thaw/internal/daemon/store"
)

// Metrics is thawd's metric registry. Safe for concurrent use.
type Metrics struct {
	reg         *prometheus.Registry
	createPhase *prometheus.HistogramVec
	create      *prometheus.HistogramVec
	creates     *prometheus.CounterVec
}

// createBuckets span a fast UFFD restore (a few ms) to a slow nested-harness
// one (tens of seconds).
var createBuckets = prometheus.ExponentialBucketsRange(0.0005, 60, 20)

// New returns the registry, reading store and slot state from st and s at
// each scrape, plus the Go runtime and process collectors.
func New(st *store.Store, s *live.Settings) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		createPhase: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "thaw_create_phase_seconds",
			Help:    "Duration of each phase of sandbox creates (slot, disk, shim, load, handshake, agent, init, ...).",
			Buckets: createBuckets,
		}, []string{"phase"}),
		create: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "thaw_create_seconds",
			Help:    "Duration of successful sandbox creates, API call to ready, by memory backend.",
			Buckets: createBuckets,
		}, []string{"backend"}),
		creates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "thaw_creates_total",
			Help: "Sandbox creates by memory backend and result.",
		}, []string{"backend", "result"}),
	}
	m.reg.MustRegister(m.createPhase, m.create, m.creates,
		&stateCollector{store: st, settings: s},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in the Prometheus exposition format. A
// collector that fails (a corrupt store record) is reported in the scrape's
// error metric while the others are still served.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Registry returns the registry, for tests and for adding collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ObserveCreate records one finished create: its phases (failed creates
// too, up to the phase that failed), and for a successful one its total.
// backend is "uffd" or "file".
func (m *Metrics) ObserveCreate(backend string, phases []store.Phase, err error) {
	var total float64
	for _, p := range phases {
		m.createPhase.WithLabelValues(p.Name).Observe(p.Duration.Seconds())
		total += p.Duration.Seconds()
	}
	result := "ok"
	if err != nil {
		result = "error"
	} else {
		m.create.WithLabelValues(backend).Observe(total)
	}
	m.creates.WithLabelValues(backend, result).Inc()
}

var (
	sandboxesDesc = prometheus.NewDesc("thaw_sandboxes", "Sandboxes by state, from the store.", []string{"state"}, nil)
	buildsDesc    = prometheus.NewDesc("thaw_template_builds", "Template builds by state, from the store.", []string{"state"}, nil)
	templatesDesc = prometheus.NewDesc("thaw_templates", "Templates in the store.", nil, nil)
	slotsDesc     = prometheus.NewDesc("thaw_restore_slots", "Restore slots: the limit, those in use and creates waiting for one.", []string{"kind"}, nil)
	uffdDesc      = prometheus.NewDesc("thaw_uffd_enabled", "1 when new sandboxes restore through the userfaultfd page server.", nil, nil)
)

// stateCollector reads the store and the live settings at scrape time.
type stateCollector struct {
	store    *store.Store
	settings *live.Settings
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{sandboxesDesc, buildsDesc, templatesDesc, slotsDesc, uffdDesc} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.settings.Slots().Stats()
	ch <- prometheus.MustNewConstMetric(slotsDesc, prometheus.GaugeValue, float64(st.Limit), "limit")
	ch <- prometheus.MustNewConstMetric(slotsDesc, prometheus.GaugeValue, float64(st.InUse), "in_use")
	ch <- prometheus.MustNewConstMetric(slotsDesc, prometheus.GaugeValue, float64(st.Waiting), "waiting")
	uffd := 0.0
	if c.settings.UFFD() {
		uffd = 1
	}
	ch <- prometheus.MustNewConstMetric(uffdDesc, prometheus.GaugeValue, uffd)

	if sbs, err := c.store.Sandboxes(); err != nil {
		ch <- prometheus.NewInvalidMetric(sandboxesDesc, err)
	} else {
		n := map[store.SandboxState]int{}
		for _, sb := range sbs {
			n[sb.State]++
		}
		for _, s := range store.SandboxStates() {
			ch <- prometheus.MustNewConstMetric(sandboxesDesc, prometheus.GaugeValue, float64(n[s]), string(s))
		}
	}
	if ts, err := c.store.Templates(); err != nil {
		ch <- prometheus.NewInvalidMetric(buildsDesc, err)
	} else {
		n := map[store.BuildState]int{}
		for _, t := range ts {
			for _, b := range t.Builds {
				n[b.State]++
			}
		}
		for _, s := range store.BuildStates() {
			ch <- prometheus.MustNewConstMetric(buildsDesc, prometheus.GaugeValue, float64(n[s]), string(s))
		}
		ch <- prometheus.MustNewConstMetric(templatesDesc, prometheus.GaugeValue, float64(len(ts)))
	}
}
