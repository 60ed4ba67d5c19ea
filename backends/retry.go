package backends

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// RetryPolicy bounds how a backend call is retried. Retries happen only for
// Retryable errors, only while the caller's deadline leaves room, and, with
// a Budget, only while the PKI has not been failing most calls lately.
type RetryPolicy struct {
	// Attempts is the maximum number of calls, the first included (default 6).
	Attempts int
	// Initial is the first backoff (default 100ms); each next one doubles,
	// up to Max (default 1s), with jitter: up to about 2.5s of
	// waiting in all, enough to ride out a backend's restart inside the
	// broker's default 10s sign timeout.
	Initial, Max time.Duration
	// Budget, shared by every request to one PKI, stops retries when that
	// PKI keeps failing; nil retries without limit (tests, start-up).
	Budget *RetryBudget
}

// NewRetryPolicy is the policy a backend uses for its PKI calls: the
// default attempts and backoff, drawing on a fresh budget of its own.
func NewRetryPolicy() RetryPolicy {
	return RetryPolicy{Budget: NewRetryBudget(DefaultBudgetTokens, DefaultBudgetRatio)}
}

// Defaults of the retry budget, as gRPC's retry throttling defaults them:
// ten tokens, and a success earns a tenth of one back.
const (
	DefaultBudgetTokens = 10
	DefaultBudgetRatio  = 0.1
)

// RetryBudget is gRPC's retry throttling (gRFC A6) for one PKI: every
// failed call costs a token, every success earns ratio tokens back, and
// retries are made only while more than half the tokens are left. Under
// sustained throttling or an outage the PKI therefore sees about one call
// per workload request instead of one per attempt, and the workload gets
// ResourceExhausted or Unavailable at once; its own agent retries with
// backoff. A few successes restore retries.
type RetryBudget struct {
	mu            sync.Mutex
	tokens, limit float64
	ratio         float64
}

// NewRetryBudget returns a full budget of limit tokens earning ratio per
// success.
func NewRetryBudget(limit, ratio float64) *RetryBudget {
	return &RetryBudget{tokens: limit, limit: limit, ratio: ratio}
}

// record accounts one call's outcome and reports whether a retry may
// follow it. Only retryable failures (the PKI's trouble) cost tokens: a
// refusal says nothing about the PKI's health.
func (b *RetryBudget) record(err error) (retryAllowed bool) {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case err == nil:
		b.tokens = min(b.tokens+b.ratio, b.limit)
	case Retryable(err):
		b.tokens = max(b.tokens-1, 0)
	}
	return b.tokens > b.limit/2
}

// Tokens is the budget left, for tests and metrics.
func (b *RetryBudget) Tokens() float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.tokens
}

// Do calls fn until it succeeds, returns a non-retryable error, the attempts
// are used up, or ctx would expire before the next attempt could start.
func (p RetryPolicy) Do(ctx context.Context, fn func(ctx context.Context) error) error {
	attempts, backoff, maxBackoff := p.Attempts, p.Initial, p.Max
	if attempts <= 0 {
		attempts = 6
	}
	if backoff <= 0 {
		backoff = 100 * time.Millisecond
	}
	if maxBackoff <= 0 {
		maxBackoff = time.Second
	}
	var err error
	for i := 0; i < attempts; i++ {
		err = fn(ctx)
		retryAllowed := p.Budget.record(err)
		if err == nil || !Retryable(err) {
			return err
		}
		if i == attempts-1 {
			break
		}
		if !retryAllowed {
			return fmt.Errorf("%w (not retried: most recent calls to this certificate authority failed, so the broker is holding back)", err)
		}
		// Equal jitter: at least half the backoff, so retries never bunch up.
		wait := backoff/2 + time.Duration(rand.Int64N(int64(backoff/2)+1))
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return fmt.Errorf("%w (no time left in the caller's deadline for another attempt)", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (gave up: %v)", err, ctx.Err())
		case <-t.C:
		}
		backoff = min(backoff*2, maxBackoff)
	}
	return fmt.Errorf("%w (after %d attempts)", err, attempts)
}
