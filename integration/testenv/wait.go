package testenv

import (
	"testing"
	"time"
)

// WaitUntil polls cond every 20 ms until it holds and returns how long
// that took; the test fails when it does not hold within limit. Delays
// the tests measure (revocation, staleness, hand-over) are read from it,
// so the poll interval bounds their resolution.
func WaitUntil(t testing.TB, what string, limit time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			t.Fatalf("%s: not within %s", what, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}
