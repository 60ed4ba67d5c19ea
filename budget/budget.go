// Package budget bounds how many new certificates one identity can have
// signed: a token bucket per key (the broker keys it by cluster and SPIFFE
// ID), refilled at a steady rate, in a bounded table. Every signing at a
// commercial PKI is billed, and a compromised workload could otherwise ask
// for distinct certificates without end.
//
// Memory is bounded: at most MaxKeys buckets are tracked, least recently
// charged first out. A bucket that has refilled completely says nothing a
// new bucket would not, so dropping it loses nothing; only when the table
// is full of active identities does dropping one hand it a fresh bucket.
// Every operation is O(1) under one mutex.
package budget

import (
	"container/list"
	"fmt"
	"sync"
	"time"
)

// Config sizes the buckets.
type Config struct {
	// Burst is how many signings an identity can have at once from a full
	// bucket.
	Burst int
	// Refill is the time one token takes to come back.
	Refill time.Duration
	// MaxKeys bounds the identities tracked.
	MaxKeys int
}

// Exhausted is the refusal of a charge: which limit, and when a retry
// would succeed.
type Exhausted struct {
	Key        string
	Burst      int
	Refill     time.Duration
	RetryAfter time.Duration
}

func (e *Exhausted) Error() string {
	return fmt.Sprintf("issuance budget of %s exhausted: at most %d new certificates at once, then one every %s; retry in %s",
		e.Key, e.Burst, e.Refill, e.RetryAfter.Round(time.Second))
}

// Budget is a table of token buckets. The zero value is not usable; use New.
type Budget struct {
	cfg Config
	now func() time.Time

	mu      sync.Mutex
	buckets map[string]*list.Element
	lru     *list.List // of *bucket, most recently charged at the front
}

type bucket struct {
	key    string
	tokens float64
	at     time.Time // when tokens was computed
}

// New returns a budget; cfg must have positive Burst, Refill and MaxKeys.
func New(cfg Config) (*Budget, error) {
	if cfg.Burst <= 0 || cfg.Refill <= 0 || cfg.MaxKeys <= 0 {
		return nil, fmt.Errorf("budget: burst (%d), refill (%s) and maximum keys (%d) must all be positive", cfg.Burst, cfg.Refill, cfg.MaxKeys)
	}
	return &Budget{cfg: cfg, now: time.Now, buckets: map[string]*list.Element{}, lru: list.New()}, nil
}

// Charge takes one token from key's bucket, or returns *Exhausted.
func (b *Budget) Charge(key string) error {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dropFullLocked(now)
	el, ok := b.buckets[key]
	if !ok {
		if b.lru.Len() >= b.cfg.MaxKeys {
			oldest := b.lru.Back()
			delete(b.buckets, oldest.Value.(*bucket).key)
			b.lru.Remove(oldest)
		}
		el = b.lru.PushFront(&bucket{key: key, tokens: float64(b.cfg.Burst), at: now})
		b.buckets[key] = el
	} else {
		b.lru.MoveToFront(el)
	}
	bk := el.Value.(*bucket)
	bk.tokens = b.refilled(bk, now)
	bk.at = now
	if bk.tokens < 1 {
		wait := time.Duration((1 - bk.tokens) * float64(b.cfg.Refill))
		return &Exhausted{Key: key, Burst: b.cfg.Burst, Refill: b.cfg.Refill, RetryAfter: max(wait, time.Second)}
	}
	bk.tokens--
	return nil
}

// Len is the number of buckets tracked.
func (b *Budget) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lru.Len()
}

func (b *Budget) refilled(bk *bucket, now time.Time) float64 {
	t := bk.tokens + float64(now.Sub(bk.at))/float64(b.cfg.Refill)
	return min(t, float64(b.cfg.Burst))
}

// dropFullLocked drops least recently charged buckets that have refilled
// completely: a few per call, so the table shrinks as identities go idle
// without a sweep that would hold the lock.
func (b *Budget) dropFullLocked(now time.Time) {
	for range 2 {
		el := b.lru.Back()
		if el == nil {
			return
		}
		bk := el.Value.(*bucket)
		if b.refilled(bk, now) < float64(b.cfg.Burst) {
			return
		}
		delete(b.buckets, bk.key)
		b.lru.Remove(el)
	}
}
