package backends

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestRetryPolicy(t *testing.T) {
	refused := fmt.Errorf("pki: %w: role forbids it", ErrRefused)
	down := fmt.Errorf("pki: %w: connection refused", ErrUnavailable)
	slow := fmt.Errorf("pki: %w: rate exceeded", ErrThrottled)
	cases := []struct {
		name      string
		errs      []error // answers in order; nil is success
		deadline  time.Duration
		wantCalls int
		want      error
	}{
		{"success first", []error{nil}, time.Second, 1, nil},
		{"refusal is not retried", []error{refused, nil}, time.Second, 1, ErrRefused},
		{"unavailable then success", []error{down, down, nil}, 5 * time.Second, 3, nil},
		{"throttled then success", []error{slow, nil}, 5 * time.Second, 2, nil},
		{"attempts run out", []error{down, down, down, down, down, down, down}, 30 * time.Second, 6, ErrUnavailable},
		{"deadline too close for another try", []error{down, down, down, down, down, down}, 20 * time.Millisecond, 1, ErrUnavailable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), tc.deadline)
			defer cancel()
			calls := 0
			p := RetryPolicy{Initial: time.Millisecond, Max: 4 * time.Millisecond}
			if tc.deadline < 100*time.Millisecond {
				p = RetryPolicy{Initial: time.Second}
			}
			err := p.Do(ctx, func(context.Context) error {
				e := tc.errs[calls]
				calls++
				return e
			})
			if calls > tc.wantCalls || (tc.want == nil) != (err == nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("calls=%d err=%v; want calls<=%d err %v", calls, err, tc.wantCalls, tc.want)
			}
		})
	}
}
