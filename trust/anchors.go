// Package trust keeps the broker's current trust anchors: the roots every
// issued chain must verify to and every client certificate is checked
// against. It caches what the backend reports and refreshes it, keeping the
// last good set when a refresh fails so a backend blip does not stop
// verification.
package trust

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

const retryAfterFailure = 10 * time.Second

// Source returns the trust anchors, typically backends.Signer.TrustAnchors.
type Source func(ctx context.Context) ([]*x509.Certificate, error)

// Anchors is a refreshing cache of trust anchors.
type Anchors struct {
	src     Source
	refresh time.Duration
	log     *slog.Logger

	mu      sync.Mutex
	certs   []*x509.Certificate
	fetched time.Time
	// nextTry holds off refreshes after a failure, so an outage of the
	// backend does not turn every request into a slow failing call.
	nextTry time.Time
}

// NewAnchors returns a cache that asks src again once refresh has passed.
func NewAnchors(src Source, refresh time.Duration, log *slog.Logger) *Anchors {
	if log == nil {
		log = slog.Default()
	}
	return &Anchors{src: src, refresh: refresh, log: log}
}

// Get returns the current anchors.
func (a *Anchors) Get(ctx context.Context) ([]*x509.Certificate, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.certs != nil && (time.Since(a.fetched) < a.refresh || time.Now().Before(a.nextTry)) {
		return a.certs, nil
	}
	certs, err := a.src(ctx)
	if err == nil && len(certs) == 0 {
		err = errors.New("the backend reported no trust anchors")
	}
	if err != nil {
		if a.certs != nil {
			a.log.Warn("refreshing trust anchors failed; keeping the last good set", "error", err, "age", time.Since(a.fetched).Round(time.Second))
			a.nextTry = time.Now().Add(retryAfterFailure)
			return a.certs, nil
		}
		return nil, fmt.Errorf("loading trust anchors: %w", err)
	}
	a.certs, a.fetched = certs, time.Now()
	return certs, nil
}

// Pool returns the anchors as a CertPool.
func (a *Anchors) Pool(ctx context.Context) (*x509.CertPool, error) {
	certs, err := a.Get(ctx)
	if err != nil {
		return nil, err
	}
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p, nil
}
