package backends

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"
)

// RetryPolicy bounds how a backend call is retried. Retries happen only for
// Retryable errors and only while the caller's deadline leaves room.
type RetryPolicy struct {
	// Attempts is the maximum number of calls, the first included (default 6).
	Attempts int
	// Initial is the first backoff (default 100ms); each next one doubles,
	// up to Max (default 1s), with jitter: up to about 2.5s of
	// waiting in all, enough to ride out a backend's restart inside the
	// broker's default 10s sign timeout.
	Initial, Max time.Duration
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
		if err = fn(ctx); err == nil || !Retryable(err) {
			return err
		}
		if i == attempts-1 {
			break
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
