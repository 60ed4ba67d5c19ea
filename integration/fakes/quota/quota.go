// Package quota is what the cloud CA fakes refuse under load: the next n
// calls of some operations (throttling a test injects) and calls beyond a
// per-operation token bucket (the service's request quota). Each fake
// answers a refusal with its own service's error.
package quota

import (
	"sync"

	"golang.org/x/time/rate"
)

// Quota is ready to use as its zero value: it admits everything.
type Quota struct {
	mu      sync.Mutex
	next    int
	ops     map[string]bool // nil: every operation
	limit   rate.Limit
	burst   int
	buckets map[string]*rate.Limiter
}

// Throttle refuses the next n calls of the named operations (of every
// operation when none is named).
func (q *Quota) Throttle(n int, ops ...string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.next, q.ops = n, nil
	if len(ops) > 0 {
		q.ops = map[string]bool{}
		for _, op := range ops {
			q.ops[op] = true
		}
	}
}

// SetRate admits perSecond calls a second to each operation, with bursts
// of burst (at least 1); every operation starts with a full bucket.
// perSecond <= 0 turns the limit off.
func (q *Quota) SetRate(perSecond float64, burst int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.buckets = map[string]*rate.Limiter{}
	q.limit, q.burst = 0, 0
	if perSecond > 0 {
		q.limit, q.burst = rate.Limit(perSecond), max(burst, 1)
	}
}

// Admit reports whether a call of op may go on, and counts it against the
// throttle or op's bucket.
func (q *Quota) Admit(op string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.next > 0 && (q.ops == nil || q.ops[op]) {
		q.next--
		return false
	}
	if q.limit <= 0 {
		return true
	}
	b := q.buckets[op]
	if b == nil {
		b = rate.NewLimiter(q.limit, q.burst)
		q.buckets[op] = b
	}
	return b.Allow()
}
