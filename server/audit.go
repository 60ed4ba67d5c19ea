package server

import (
	"context"
	"crypto/x509"
	"log/slog"
	"time"

	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/meshca/broker/authn"
	"github.com/meshca/broker/issuance"
	"github.com/meshca/broker/policy"
)

// audit records one request: every outcome is logged once, as a refusal
// or an issuance, with who asked and what they got, and counted. Fields
// are collected as the request goes and formatted once, at the end: a
// logger's With formats eagerly, which costs on every request in a mass
// restart.
type audit struct {
	s      *Server
	ctx    context.Context
	start  time.Time
	attrs  []slog.Attr
	method string
	signAt time.Time
}

func (s *Server) newAudit(ctx context.Context) *audit {
	a := &audit{s: s, ctx: ctx, start: time.Now(), method: "none", attrs: make([]slog.Attr, 0, 16)}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		a.add(slog.String("peer", p.Addr.String()))
	}
	return a
}

func (a *audit) add(attrs ...slog.Attr) { a.attrs = append(a.attrs, attrs...) }

func (a *audit) identity(id *authn.Identity) {
	if id.Method == "" {
		id.Method = a.s.cfg.Authenticator.Name()
	}
	a.method = id.Method
	a.add(slog.String("identity", id.ID.String()), slog.String("authn", id.Method), slog.String("cluster", id.Cluster), slog.String("subject", id.Subject))
}

// impersonation records the workload a node agent was granted.
func (a *audit) impersonation(id *authn.Identity) {
	if id.NodeAgent == nil {
		return
	}
	a.method = id.Method
	a.add(slog.String("impersonated", id.ID.String()), slog.String("node", id.NodeName), slog.String("authn", id.Method))
}

func (a *audit) decision(d *policy.Decision) {
	a.add(slog.String("requestedTTL", d.Requested.String()), slog.String("grantedTTL", d.Granted.String()))
	a.signAt = time.Now()
}

func (a *audit) signed(outcome issuance.Outcome, err error) {
	d := time.Since(a.signAt)
	a.add(slog.String("signing", string(outcome)))
	result := "ok"
	if err != nil {
		result = "error"
	}
	a.s.cfg.Metrics.backendSign.WithLabelValues(result).Observe(d.Seconds())
}

// log writes one line with everything collected so far.
func (a *audit) log(level slog.Level, msg string, attrs ...slog.Attr) {
	a.s.cfg.Logger.LogAttrs(a.ctx, level, msg, append(a.attrs, attrs...)...)
}

// refuse logs and counts a refusal and returns err (a gRPC status) to the
// caller.
func (a *audit) refuse(err error) error {
	st := status.Convert(err)
	a.log(slog.LevelWarn, "certificate request refused", slog.String("code", st.Code().String()), slog.String("reason", st.Message()), slog.String("duration", time.Since(a.start).String()))
	a.s.cfg.Metrics.observe(a.method, st.Code().String(), time.Since(a.start))
	return err
}

func (a *audit) issued(leaf *x509.Certificate) {
	a.log(slog.LevelInfo, "certificate issued", slog.String("serial", leaf.SerialNumber.Text(16)), slog.String("notAfter", leaf.NotAfter.UTC().Format(time.RFC3339)), slog.String("duration", time.Since(a.start).String()))
	a.s.cfg.Metrics.observe(a.method, "OK", time.Since(a.start))
}
