package server

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/meshca/broker/authn"
	"github.com/meshca/broker/issuance"
	"github.com/meshca/broker/policy"
)

// audit records one request: every outcome is logged once, as a refusal
// or an issuance, with who asked and what they got, and counted.
type audit struct {
	s       *Server
	start   time.Time
	log     *slog.Logger
	method  string
	signDur time.Duration
	signAt  time.Time
}

func (s *Server) newAudit(ctx context.Context) *audit {
	log := s.cfg.Logger
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		log = log.With("peer", p.Addr.String())
	}
	return &audit{s: s, start: time.Now(), log: log, method: "none"}
}

func (a *audit) identity(id *authn.Identity) {
	if id.Method == "" {
		id.Method = a.s.cfg.Authenticator.Name()
	}
	a.method = id.Method
	a.log = a.log.With("identity", id.ID.String(), "authn", id.Method, "cluster", id.Cluster, "subject", id.Subject)
}

// impersonation records the workload a node agent was granted.
func (a *audit) impersonation(id *authn.Identity) {
	if id.NodeAgent == nil {
		return
	}
	a.method = id.Method
	a.log = a.log.With("impersonated", id.ID.String(), "node", id.NodeName, "authn", id.Method)
}

func (a *audit) decision(d *policy.Decision) {
	a.log = a.log.With("requestedTTL", d.Requested.String(), "grantedTTL", d.Granted.String())
	a.signAt = time.Now()
}

func (a *audit) signed(outcome issuance.Outcome, err error) {
	d := time.Since(a.signAt)
	a.log = a.log.With("signing", string(outcome))
	result := "ok"
	if err != nil {
		result = "error"
	}
	a.s.cfg.Metrics.backendSign.WithLabelValues(result).Observe(d.Seconds())
}

// refuse logs and counts a refusal and returns err (a gRPC status) to the
// caller.
func (a *audit) refuse(err error) error {
	st := status.Convert(err)
	a.log.Warn("certificate request refused", "code", st.Code().String(), "reason", st.Message(), "duration", time.Since(a.start).String())
	a.s.cfg.Metrics.observe(a.method, st.Code().String(), time.Since(a.start))
	return err
}

func (a *audit) issued(leaf *x509.Certificate) {
	a.log.Info("certificate issued", "serial", fmt.Sprintf("%x", leaf.SerialNumber), "notAfter", leaf.NotAfter.UTC().Format(time.RFC3339), "duration", time.Since(a.start).String())
	a.s.cfg.Metrics.observe(a.method, "OK", time.Since(a.start))
}
