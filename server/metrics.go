package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the server's Prometheus series.
type Metrics struct {
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	backendSign *prometheus.HistogramVec
	refusals    *prometheus.CounterVec
}

// NewMetrics creates the series and registers them with reg (nil: not
// registered, for tests).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_certificate_requests_total",
			Help: "CreateCertificate requests by authentication method and gRPC result code.",
		}, []string{"authn", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "meshca_certificate_request_duration_seconds",
			Help:    "CreateCertificate latency by gRPC result code.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"code"}),
		backendSign: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "meshca_backend_sign_duration_seconds",
			Help:    "Backend signing latency, retries included, by result.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"result"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshca_limit_refusals_total",
			Help: "Requests and connections refused by a limit: identity_budget, signings_in_flight, connections_total, connections_per_ip.",
		}, []string{"limit"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.duration, m.backendSign, m.refusals)
	}
	return m
}

func (m *Metrics) observe(method, code string, d time.Duration) {
	m.requests.WithLabelValues(method, code).Inc()
	m.duration.WithLabelValues(code).Observe(d.Seconds())
}

func (m *Metrics) refused(limit string) { m.refusals.WithLabelValues(limit).Inc() }

// Refused counts a refusal by a limit outside the handler (the listener's
// connection bounds).
func (m *Metrics) Refused(limit string) { m.refused(limit) }
