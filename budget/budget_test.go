package budget

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newTest(t *testing.T, cfg Config) (*Budget, *clock) {
	t.Helper()
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	b.now = c.now
	return b, c
}

func TestChargeFollowsTheBucket(t *testing.T) {
	type step struct {
		advance time.Duration
		key     string
		ok      bool
		retry   time.Duration // when refused
	}
	tests := []struct {
		name  string
		cfg   Config
		steps []step
	}{
		{"a full bucket gives burst, then refuses until a token is back",
			Config{Burst: 3, Refill: time.Minute, MaxKeys: 10},
			[]step{{0, "a", true, 0}, {0, "a", true, 0}, {0, "a", true, 0}, {0, "a", false, time.Minute},
				{30 * time.Second, "a", false, 30 * time.Second}, {30 * time.Second, "a", true, 0}, {0, "a", false, time.Minute}}},
		{"identities have buckets of their own",
			Config{Burst: 1, Refill: time.Hour, MaxKeys: 10},
			[]step{{0, "a", true, 0}, {0, "a", false, time.Hour}, {0, "b", true, 0}, {0, "b", false, time.Hour}}},
		{"refill never goes above burst",
			Config{Burst: 2, Refill: time.Second, MaxKeys: 10},
			[]step{{0, "a", true, 0}, {time.Hour, "a", true, 0}, {0, "a", true, 0}, {0, "a", false, time.Second}}},
		{"a refused charge takes nothing",
			Config{Burst: 1, Refill: 10 * time.Second, MaxKeys: 10},
			[]step{{0, "a", true, 0}, {0, "a", false, 10 * time.Second}, {0, "a", false, 10 * time.Second}, {10 * time.Second, "a", true, 0}}},
		{"with the table full, the least recently charged identity starts over",
			Config{Burst: 1, Refill: time.Hour, MaxKeys: 2},
			[]step{{0, "a", true, 0}, {0, "b", true, 0}, {0, "c", true, 0}, {0, "b", false, time.Hour}, {0, "a", true, 0}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, c := newTest(t, tt.cfg)
			for i, s := range tt.steps {
				c.t = c.t.Add(s.advance)
				err := b.Charge(s.key)
				var ex *Exhausted
				switch {
				case s.ok && err != nil:
					t.Fatalf("step %d (%s): refused: %v", i, s.key, err)
				case !s.ok && !errors.As(err, &ex):
					t.Fatalf("step %d (%s): got %v, want *Exhausted", i, s.key, err)
				case !s.ok && ex.RetryAfter != s.retry:
					t.Fatalf("step %d (%s): retry after %s, want %s (%v)", i, s.key, ex.RetryAfter, s.retry, err)
				}
			}
		})
	}
}

func TestIdleIdentitiesAreDropped(t *testing.T) {
	b, c := newTest(t, Config{Burst: 2, Refill: time.Minute, MaxKeys: 1000})
	for i := range 100 {
		if err := b.Charge(fmt.Sprint("id-", i)); err != nil {
			t.Fatal(err)
		}
	}
	if b.Len() != 100 {
		t.Fatalf("%d buckets, want 100", b.Len())
	}
	// Once every bucket has refilled, each charge drops up to two idle
	// ones: the table shrinks with traffic, no sweep needed.
	c.t = c.t.Add(time.Minute)
	for range 60 {
		if err := b.Charge("active"); err != nil {
			c.t = c.t.Add(time.Minute)
		}
	}
	if b.Len() != 1 {
		t.Fatalf("%d buckets after every other identity went idle, want 1", b.Len())
	}
}

func TestTableNeverExceedsMaxKeys(t *testing.T) {
	b, _ := newTest(t, Config{Burst: 5, Refill: time.Hour, MaxKeys: 50})
	for i := range 10_000 {
		_ = b.Charge(fmt.Sprint("id-", i))
		if b.Len() > 50 {
			t.Fatalf("%d buckets after %d identities, cap 50", b.Len(), i+1)
		}
	}
}

func TestExhaustedSaysWhichLimitAndWhen(t *testing.T) {
	b, _ := newTest(t, Config{Burst: 1, Refill: 90 * time.Second, MaxKeys: 10})
	_ = b.Charge("cluster-1/spiffe://td/ns/a/sa/b")
	err := b.Charge("cluster-1/spiffe://td/ns/a/sa/b")
	want := "issuance budget of cluster-1/spiffe://td/ns/a/sa/b exhausted: at most 1 new certificates at once, then one every 1m30s; retry in 1m30s"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %q", err, want)
	}
}

func TestNewRefusesNonPositive(t *testing.T) {
	for _, cfg := range []Config{{0, time.Second, 1}, {1, 0, 1}, {1, time.Second, 0}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}
