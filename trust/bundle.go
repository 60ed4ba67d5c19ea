// Package trust keeps the mesh's trust bundle: every root the mesh must
// trust, which is what issued chains must verify to, what client
// certificates are checked against, and what every response and every
// published root-cert.pem carry. It is the signing backend's anchors plus
// roots configured explicitly (a root coming or going in a rotation),
// refreshed in the background with the last good set kept when a source
// fails, so a backend blip neither stops verification nor changes trust.
package trust

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// retryAfterFailure is how soon a failed refresh is tried again.
const retryAfterFailure = 10 * time.Second

// Source returns certificates: the backend's anchors (its TrustAnchors)
// or the configured extra roots.
type Source func(ctx context.Context) ([]*x509.Certificate, error)

// FileSource reads roots from a PEM file at every call; an empty file is
// no roots (the end of a rotation), a missing one an error.
func FileSource(path string) Source {
	return func(context.Context) ([]*x509.Certificate, error) {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(raw)) == 0 {
			return nil, nil
		}
		var out []*x509.Certificate
		for rest := raw; ; {
			var block *pem.Block
			if block, rest = pem.Decode(rest); block == nil {
				if len(bytes.TrimSpace(rest)) != 0 {
					return nil, fmt.Errorf("%s: data that is not PEM", path)
				}
				break
			}
			if block.Type != "CERTIFICATE" {
				return nil, fmt.Errorf("%s: a %q block where certificates are expected", path, block.Type)
			}
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			out = append(out, c)
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("%s: no PEM certificate found", path)
		}
		return out, nil
	}
}

// Snapshot is one version of the trust bundle: every root the mesh must
// trust. Snapshots are immutable.
type Snapshot struct {
	// Roots is the whole bundle, each root once, in a stable order:
	// the backend's anchors first, then the extra roots.
	Roots []*x509.Certificate
	// PEM is Roots encoded, one PEM block after another: what
	// root-cert.pem and the last element of every response carry.
	PEM []byte
	// Backend are the roots the signing backend chains to now; Extra the
	// configured ones (a root coming or going in a rotation).
	Backend, Extra []*x509.Certificate
	// Generation counts changes, from 1.
	Generation uint64
	// Fetched is when the backend's anchors were last read successfully.
	Fetched time.Time
}

// Fingerprints are the roots' SHA-256 fingerprints, in order.
func (s *Snapshot) Fingerprints() []string {
	out := make([]string, len(s.Roots))
	for i, r := range s.Roots {
		out[i] = Fingerprint(r)
	}
	return out
}

// Fingerprint is a certificate's SHA-256 fingerprint in hex.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return fmt.Sprintf("%X", sum[:])
}

// Sources of the bundle.
type BundleConfig struct {
	// Backend returns the signing backend's trust anchors.
	Backend Source
	// Extra returns the configured extra roots (re-read at every
	// refresh, so editing the file takes effect); nil for none.
	Extra Source
	// Refresh is how often the sources are read again (default 5m).
	Refresh time.Duration
	Log     *slog.Logger
}

// Bundle is the trust bundle: it is loaded once at start, then refreshed
// in the background (Run), so the request path only reads a snapshot.
// When a refresh fails the last good snapshot stays; when the set of roots
// changes, the change is logged with fingerprints and subscribers are
// told.
type Bundle struct {
	cfg BundleConfig
	cur atomic.Pointer[Snapshot]

	mu   sync.Mutex
	subs []chan struct{}
	// poke asks Run for an early refresh (a verification that failed may
	// mean the backend moved to a new root).
	poke chan struct{}
}

// NewBundle returns a bundle; Load must succeed before it is used.
func NewBundle(cfg BundleConfig) *Bundle {
	if cfg.Refresh <= 0 {
		cfg.Refresh = 5 * time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Bundle{cfg: cfg, poke: make(chan struct{}, 1)}
}

// LoadBundle is NewBundle followed by its first Load.
func LoadBundle(ctx context.Context, cfg BundleConfig) (*Bundle, error) {
	b := NewBundle(cfg)
	if err := b.Load(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

// Load reads the sources now; an error leaves the previous snapshot.
func (b *Bundle) Load(ctx context.Context) error {
	backend, err := b.cfg.Backend(ctx)
	if err == nil && len(backend) == 0 {
		err = errors.New("the backend reported no trust anchors")
	}
	if err != nil {
		return fmt.Errorf("loading trust anchors: %w", err)
	}
	var extra []*x509.Certificate
	if b.cfg.Extra != nil {
		if extra, err = b.cfg.Extra(ctx); err != nil {
			return fmt.Errorf("loading the extra trusted roots: %w", err)
		}
	}
	b.set(backend, extra)
	return nil
}

func (b *Bundle) set(backend, extra []*x509.Certificate) {
	roots := dedupe(append(slices.Clone(backend), extra...))
	prev := b.cur.Load()
	next := &Snapshot{Roots: roots, PEM: encode(roots), Backend: backend, Extra: extra, Generation: 1, Fetched: time.Now()}
	if prev != nil {
		next.Generation = prev.Generation
		if bytes.Equal(prev.PEM, next.PEM) && sameSet(prev.Backend, backend) {
			b.cur.Store(next) // same bundle, fresher timestamp
			return
		}
		next.Generation++
	}
	b.cur.Store(next)
	b.cfg.Log.Warn("trust bundle changed", "generation", next.Generation, "roots", describe(roots), "backend", fingerprints(backend), "extra", fingerprints(extra))
	b.mu.Lock()
	for _, s := range b.subs {
		select {
		case s <- struct{}{}:
		default:
		}
	}
	b.mu.Unlock()
}

// Current is the current snapshot (nil before Load).
func (b *Bundle) Current() *Snapshot { return b.cur.Load() }

// Get returns the current roots, for verification.
func (b *Bundle) Get(context.Context) ([]*x509.Certificate, error) {
	s := b.cur.Load()
	if s == nil {
		return nil, errors.New("trust bundle not loaded")
	}
	return s.Roots, nil
}

// Pool returns the current roots as a CertPool.
func (b *Bundle) Pool(ctx context.Context) (*x509.CertPool, error) {
	roots, err := b.Get(ctx)
	if err != nil {
		return nil, err
	}
	p := x509.NewCertPool()
	for _, c := range roots {
		p.AddCert(c)
	}
	return p, nil
}

// Subscribe returns a channel that receives a value after each change (a
// slow reader misses intermediate changes, never the last).
func (b *Bundle) Subscribe() <-chan struct{} {
	ch := make(chan struct{}, 1)
	b.mu.Lock()
	b.subs = append(b.subs, ch)
	b.mu.Unlock()
	return ch
}

// RefreshSoon asks Run to read the sources again now rather than at the
// next interval.
func (b *Bundle) RefreshSoon() {
	select {
	case b.poke <- struct{}{}:
	default:
	}
}

// Run refreshes the bundle until ctx ends. A failed refresh keeps the
// last good snapshot and is retried after 10s.
func (b *Bundle) Run(ctx context.Context) error {
	wait := b.cfg.Refresh
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		case <-b.poke:
		}
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := b.Load(rctx)
		cancel()
		wait = b.cfg.Refresh
		if err != nil && ctx.Err() == nil {
			age := time.Duration(0)
			if s := b.cur.Load(); s != nil {
				age = time.Since(s.Fetched).Round(time.Second)
			}
			b.cfg.Log.Warn("refreshing the trust bundle failed; keeping the last good set", "error", err, "age", age.String())
			wait = retryAfterFailure
		}
	}
}

// NeedLeaderElection: every replica keeps its own bundle.
func (b *Bundle) NeedLeaderElection() bool { return false }

func dedupe(certs []*x509.Certificate) []*x509.Certificate {
	out := certs[:0:0]
	for _, c := range certs {
		if !slices.ContainsFunc(out, func(o *x509.Certificate) bool { return o.Equal(c) }) {
			out = append(out, c)
		}
	}
	return out
}

func encode(certs []*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}

func sameSet(a, b []*x509.Certificate) bool {
	fa, fb := fingerprints(a), fingerprints(b)
	sort.Strings(fa)
	sort.Strings(fb)
	return slices.Equal(fa, fb)
}

func fingerprints(certs []*x509.Certificate) []string {
	out := make([]string, len(certs))
	for i, c := range certs {
		out[i] = Fingerprint(c)
	}
	return out
}

func describe(certs []*x509.Certificate) []string {
	out := make([]string, len(certs))
	for i, c := range certs {
		out[i] = fmt.Sprintf("%s sha256=%s until %s", c.Subject, Fingerprint(c), c.NotAfter.UTC().Format(time.RFC3339))
	}
	return out
}
