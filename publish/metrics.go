package publish

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Kinds and results in metric labels.
const (
	kindConfigMapLabel = "configmap"
	kindCTBLabel       = "clustertrustbundle"

	resultCreated = "created"
	resultUpdated = "updated"
	// resultStale: the write was refused because the publisher's cache was
	// behind (409 Conflict, AlreadyExists, NotFound); it looks again.
	resultStale = "stale"
	resultError = "error"
)

type metrics struct {
	writes    *prometheus.CounterVec
	conflicts *prometheus.CounterVec
}

var (
	namespacesDesc = prometheus.NewDesc("meshca_trust_publish_namespaces",
		"Namespaces the trust-bundle publisher keeps istio-ca-root-cert in (selected, not terminating), by cluster.", []string{"cluster"}, nil)
	inSyncDesc = prometheus.NewDesc("meshca_trust_publish_namespaces_in_sync",
		"Of those namespaces, how many hold the current trust bundle, by cluster.", []string{"cluster"}, nil)
	generationDesc = prometheus.NewDesc("meshca_trust_publish_generation",
		"The trust-bundle generation every published object of the kind holds in the cluster (0 while any is missing or out of date).", []string{"cluster", "kind"}, nil)
	backoffDesc = prometheus.NewDesc("meshca_trust_publish_backoff_objects",
		"Objects whose rewrite is held back because a competing writer keeps changing them, by cluster.", []string{"cluster"}, nil)
)

func newMetrics(reg prometheus.Registerer, p *Publisher) (*metrics, error) {
	m := &metrics{
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_trust_publish_writes_total",
			Help: "Writes of the published trust bundle by cluster, kind (configmap, clustertrustbundle) and result (created, updated, stale: refused because the cache was behind, error).",
		}, []string{"cluster", "kind", "result"}),
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_trust_publish_conflicts_total",
			Help: "Competing writers detected (another writer changed what the publisher wrote again; the publisher backs off), by cluster and kind.",
		}, []string{"cluster", "kind"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []*prometheus.CounterVec{m.writes, m.conflicts} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, err
			}
			// Another publisher of this process registered them first:
			// count into the same series.
			existing, ok := are.ExistingCollector.(*prometheus.CounterVec)
			if !ok {
				return nil, err
			}
			if c == m.writes {
				m.writes = existing
			} else {
				m.conflicts = existing
			}
		}
	}
	if err := reg.Register(gauges{p}); err != nil {
		return nil, err
	}
	return m, nil
}

// gauges reports the publisher's current state at scrape time.
type gauges struct{ p *Publisher }

func (g gauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- namespacesDesc
	ch <- inSyncDesc
	ch <- generationDesc
	ch <- backoffDesc
}

func (g gauges) Collect(ch chan<- prometheus.Metric) {
	var gen uint64
	if s := g.p.cfg.Bundle.Current(); s != nil {
		gen = s.Generation
	}
	for _, w := range g.p.currentWorkers() {
		st := w.status(gen)
		ch <- prometheus.MustNewConstMetric(namespacesDesc, prometheus.GaugeValue, float64(st.Namespaces), w.id)
		ch <- prometheus.MustNewConstMetric(inSyncDesc, prometheus.GaugeValue, float64(st.InSync), w.id)
		ch <- prometheus.MustNewConstMetric(generationDesc, prometheus.GaugeValue, float64(st.ConfigMapGeneration), w.id, kindConfigMapLabel)
		if st.CTBServed {
			ch <- prometheus.MustNewConstMetric(generationDesc, prometheus.GaugeValue, float64(st.CTBGeneration), w.id, kindCTBLabel)
		}
		ch <- prometheus.MustNewConstMetric(backoffDesc, prometheus.GaugeValue, float64(st.BackingOff), w.id)
	}
}
