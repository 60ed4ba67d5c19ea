// Package servingcert keeps the broker's own TLS serving certificate: it is
// issued by the broker's backend for the configured DNS names (so the Istio
// agent verifies it against the mesh root it already has), checked like any
// workload certificate, and renewed before expiry without a restart.
package servingcert

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/csrgen"
	"github.com/meshca/broker/policy"
	"github.com/meshca/broker/trust"
	"github.com/meshca/broker/verify"
)

// Config says what to issue.
type Config struct {
	DNSNames []string
	TTL      time.Duration
	// Timeout bounds one issuance (default 30s).
	Timeout time.Duration
	// OnIssued, if set, is called with every certificate made current
	// (to store it elsewhere, e.g. istiod's Secret); an error makes the
	// issuance count as failed and be retried.
	OnIssued func(ctx context.Context, cert *tls.Certificate) error
	// Name says whose certificate this is, in logs (default "serving").
	Name string
	// Issuers, if set, learns the CA that signed each certificate.
	Issuers *trust.Issuers
}

// Rotator holds the current serving certificate and renews it.
type Rotator struct {
	cfg     Config
	signer  backends.Signer
	anchors *trust.Bundle
	log     *slog.Logger
	cur     atomic.Pointer[tls.Certificate]
}

// New returns a rotator; call Issue once before serving, then Run.
func New(cfg Config, signer backends.Signer, anchors *trust.Bundle, log *slog.Logger) (*Rotator, error) {
	if len(cfg.DNSNames) == 0 {
		return nil, errors.New("servingcert: at least one DNS name is required")
	}
	if cfg.TTL < 2*time.Minute {
		return nil, fmt.Errorf("servingcert: ttl %s is too short", cfg.TTL)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Name == "" {
		cfg.Name = "serving"
	}
	if log == nil {
		log = slog.Default()
	}
	return &Rotator{cfg: cfg, signer: signer, anchors: anchors, log: log}, nil
}

// Issue obtains a fresh certificate and makes it current.
func (r *Rotator) Issue(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("servingcert: generating key: %w", err)
	}
	// A critical SAN with the empty subject, or a strict PKI refuses it.
	csrDER, err := csrgen.New(key, csrgen.Names{DNSNames: r.cfg.DNSNames})
	if err != nil {
		return fmt.Errorf("servingcert: creating CSR: %w", err)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return fmt.Errorf("servingcert: parsing CSR: %w", err)
	}
	now := time.Now().Truncate(time.Second)
	req := &backends.Request{CSR: csr, Template: policy.ServingTemplate(r.cfg.DNSNames, now.Add(-time.Minute), now.Add(r.cfg.TTL))}
	issued, err := r.signer.Sign(ctx, req)
	if err != nil {
		return fmt.Errorf("servingcert: signing: %w", err)
	}
	anchors, err := r.anchors.Get(ctx)
	if err != nil {
		return fmt.Errorf("servingcert: %w", err)
	}
	chain, err := verify.Chain(req, issued, anchors, time.Now())
	if err != nil {
		return fmt.Errorf("servingcert: %w", err)
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	// Send leaf and intermediates; the agent already has the root.
	for _, c := range chain[:max(1, len(chain)-1)] {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	if len(chain) > 1 && r.cfg.Issuers != nil {
		r.cfg.Issuers.Learn(chain[1])
	}
	if r.cfg.OnIssued != nil {
		if err := r.cfg.OnIssued(ctx, cert); err != nil {
			return fmt.Errorf("servingcert: storing the %s certificate: %w", r.cfg.Name, err)
		}
	}
	r.cur.Store(cert)
	r.log.Info(r.cfg.Name+" certificate issued", "dnsNames", r.cfg.DNSNames, "notAfter", chain[0].NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// Adopt makes an existing certificate current (one kept from a previous
// run), so it is renewed on its own schedule rather than at once.
func (r *Rotator) Adopt(cert *tls.Certificate) { r.cur.Store(cert) }

// Current returns the certificate in use.
func (r *Rotator) Current() *tls.Certificate { return r.cur.Load() }

// GetCertificate is for tls.Config.
func (r *Rotator) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := r.cur.Load(); c != nil {
		return c, nil
	}
	return nil, errors.New("no serving certificate yet")
}

// Run renews the certificate when two thirds of its lifetime have passed,
// retrying failures with backoff, until ctx ends.
func (r *Rotator) Run(ctx context.Context) {
	const firstRetry = 5 * time.Second
	backoff := firstRetry
	for {
		if !sleep(ctx, r.renewIn()) {
			return
		}
		if err := r.Issue(ctx); err != nil {
			r.log.Error("renewing the "+r.cfg.Name+" certificate failed; will retry", "error", err, "retryIn", backoff)
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(backoff*2, 5*time.Minute)
			continue
		}
		backoff = firstRetry
	}
}

// renewIn is the time until two thirds of the current certificate's
// lifetime have passed.
func (r *Rotator) renewIn() time.Duration {
	c := r.cur.Load()
	if c == nil || c.Leaf == nil {
		return 0
	}
	life := c.Leaf.NotAfter.Sub(c.Leaf.NotBefore)
	return time.Until(c.Leaf.NotBefore.Add(life * 2 / 3))
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
