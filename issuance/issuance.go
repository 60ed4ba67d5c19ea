// Package issuance makes one approved request cost at most one PKI
// issuance: the Istio agent retries a request that timed out with the same
// CSR, and every retry would otherwise issue (and, at a commercial PKI,
// bill) another certificate that nobody receives. Requests with the same
// CSR and the same approved certificate within a window share one signing:
// a retry joins the signing still under way, or gets the certificate it
// produced. The first request's approved template is kept and handed back,
// so a PKI's own idempotency key (derived from it) stays the same and the
// broker verifies the certificate against what was actually asked for.
package issuance

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/meshca/broker/backends"
)

// Config bounds the cache.
type Config struct {
	// Window is how long a finished issuance is handed to retries of the
	// same request (default 5m; the agent's retries span seconds).
	Window time.Duration
	// SignTimeout bounds one signing, which runs on after the request
	// that started it has given up, so that its retry can collect it
	// (default 1m).
	SignTimeout time.Duration
	// MaxEntries bounds the finished issuances kept (default 4096).
	MaxEntries int
	// MaxInFlight bounds the signings under way, those whose caller has
	// left included (default 256). A new signing beyond it is refused at
	// once with ErrBusy; joining or reusing one is never refused.
	MaxInFlight int
	// Rate caps new signings per second (0: no cap), with a bucket of
	// Burst (default: one second's worth); beyond it a new signing is
	// refused at once, wrapping backends.ErrThrottled, as the PKI's own
	// throttling would be. A caller is told at once: waiting would hold
	// it into the seconds its own retries should have.
	Rate  float64
	Burst int
}

// ErrBusy refuses a new signing while MaxInFlight are under way.
var ErrBusy = errors.New("too many certificate signings in flight")

// Admit is asked once before a new signing starts (not when a request
// joins or reuses one), so that only new PKI signings are charged; an
// error refuses the signing and is returned from Sign.
type Admit func() error

// Cache shares signings between identical requests.
type Cache struct {
	cfg    Config
	signer backends.Signer
	now    func() time.Time

	rate *rate.Limiter // nil: no cap

	mu       sync.Mutex
	entries  map[key]*entry
	order    []key // finished entries, oldest first
	inFlight int
}

type key [sha256.Size]byte

type entry struct {
	req      *backends.Request
	ready    chan struct{}
	chain    []*x509.Certificate
	err      error
	finished time.Time
}

// New returns a cache in front of signer.
func New(signer backends.Signer, cfg Config) *Cache {
	if cfg.Window <= 0 {
		cfg.Window = 5 * time.Minute
	}
	if cfg.SignTimeout <= 0 {
		cfg.SignTimeout = time.Minute
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = 4096
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 256
	}
	c := &Cache{cfg: cfg, signer: signer, now: time.Now, entries: map[key]*entry{}}
	if cfg.Rate > 0 {
		c.rate = rate.NewLimiter(rate.Limit(cfg.Rate), max(cfg.Burst, 1, int(cfg.Rate)))
	}
	return c
}

// Outcome says how a Sign was served, for audit and metrics.
type Outcome string

const (
	// Issued: this request started the signing.
	Issued Outcome = "issued"
	// Joined: a signing for the same request was under way.
	Joined Outcome = "joined"
	// Reused: the same request was issued a certificate moments ago.
	Reused Outcome = "reused"
)

// Sign returns a certificate for req, signed at most once for the same CSR
// and approved certificate within the window. The request it returns is
// the one the certificate was issued for: req itself, or the first of its
// identical predecessors, whose template differs from req's only in its
// NotBefore and NotAfter (same lifetime). Verify against it.
//
// If ctx ends before the signing does, Sign returns ctx's error and the
// signing goes on (bounded by Config.SignTimeout) for a retry to collect.
//
// A new signing is first counted against MaxInFlight (ErrBusy beyond it)
// and then admitted by admit (nil: always); a refusal by either starts
// nothing, and requests that joined it meanwhile get the same error.
func (c *Cache) Sign(ctx context.Context, req *backends.Request, admit Admit) (*backends.Request, []*x509.Certificate, Outcome, error) {
	k := keyOf(req)
	c.mu.Lock()
	e, outcome := c.entries[k], Joined
	if e != nil && isDone(e) && (e.err != nil || c.now().Sub(e.finished) > c.cfg.Window) {
		// Failures are not remembered: a retry must try again.
		delete(c.entries, k)
		e = nil
	}
	if e == nil {
		if c.inFlight >= c.cfg.MaxInFlight {
			c.mu.Unlock()
			return nil, nil, Issued, fmt.Errorf("%w (%d, the limit); retry in a few seconds", ErrBusy, c.cfg.MaxInFlight)
		}
		if c.rate != nil && !c.rate.Allow() {
			c.mu.Unlock()
			return nil, nil, Issued, fmt.Errorf("%w: the backend's signing rate (limits.issuance.backendRate, %v/s) is spent; retry in a second", backends.ErrThrottled, c.cfg.Rate)
		}
		c.inFlight++
		e, outcome = &entry{req: req, ready: make(chan struct{})}, Issued
		c.entries[k] = e
	} else if isDone(e) {
		outcome = Reused
	}
	c.mu.Unlock()

	if outcome == Issued {
		// Outside the lock: admit is the caller's, and may take its own.
		if admit != nil {
			if err := admit(); err != nil {
				c.finish(k, e, nil, err)
				return nil, nil, outcome, err
			}
		}
		go c.sign(context.WithoutCancel(ctx), k, e)
	}

	select {
	case <-e.ready:
		if e.err != nil {
			return nil, nil, outcome, e.err
		}
		return e.req, e.chain, outcome, nil
	case <-ctx.Done():
		return nil, nil, outcome, fmt.Errorf("%w (the signing goes on; a retry of the same request will receive its certificate)", ctx.Err())
	}
}

// InFlight is the number of signings under way, for tests and metrics.
func (c *Cache) InFlight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inFlight
}

func (c *Cache) sign(ctx context.Context, k key, e *entry) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.SignTimeout)
	defer cancel()
	chain, err := c.signer.Sign(ctx, e.req)
	c.finish(k, e, chain, err)
}

// finish records a signing's end (or its refusal before it started) and
// frees its in-flight slot.
func (c *Cache) finish(k key, e *entry, chain []*x509.Certificate, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inFlight--
	e.chain, e.err, e.finished = chain, err, c.now()
	close(e.ready)
	if err != nil {
		if c.entries[k] == e {
			delete(c.entries, k)
		}
		return
	}
	c.order = append(c.order, k)
	c.evictLocked()
}

// evictLocked drops finished entries past the window, then the oldest
// finished ones while there are too many. Entries in flight are bounded
// by the requests in flight and are never dropped.
func (c *Cache) evictLocked() {
	now := c.now()
	for len(c.order) > 0 {
		k := c.order[0]
		e, ok := c.entries[k]
		if ok && isDone(e) && now.Sub(e.finished) <= c.cfg.Window && len(c.order) <= c.cfg.MaxEntries {
			break
		}
		c.order = c.order[1:]
		if ok && isDone(e) {
			delete(c.entries, k)
		}
	}
}

// Len is the number of entries, in flight or finished, for tests and metrics.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

func isDone(e *entry) bool {
	select {
	case <-e.ready:
		return true
	default:
		return false
	}
}

// keyOf is everything about a request that stays the same when the agent
// retries it: the CSR (and so the public key), and the approved
// certificate but for its validity instant (its lifetime is kept, so a
// change of policy is a different request). The approved names carry the
// caller's identity, so a certificate never goes to another identity.
func keyOf(req *backends.Request) key {
	h := sha256.New()
	field := func(b []byte) {
		_ = binary.Write(h, binary.BigEndian, uint32(len(b)))
		h.Write(b)
	}
	t := req.Template
	field(req.CSR.Raw)
	field(t.RawSubject)
	field([]byte(t.Subject.String()))
	for _, u := range t.URIs {
		field([]byte("uri:" + u.String()))
	}
	for _, d := range t.DNSNames {
		field([]byte("dns:" + d))
	}
	for _, ip := range t.IPAddresses {
		field([]byte("ip:" + ip.String()))
	}
	_ = binary.Write(h, binary.BigEndian, int64(t.NotAfter.Sub(t.NotBefore)))
	_ = binary.Write(h, binary.BigEndian, uint32(t.KeyUsage))
	for _, u := range t.ExtKeyUsage {
		_ = binary.Write(h, binary.BigEndian, int32(u))
	}
	_ = binary.Write(h, binary.BigEndian, t.IsCA)
	var k key
	h.Sum(k[:0])
	return k
}
