package quota

import "testing"

func TestQuota(t *testing.T) {
	admitted := func(q *Quota, op string, n int) int {
		ok := 0
		for range n {
			if q.Admit(op) {
				ok++
			}
		}
		return ok
	}
	var q Quota
	if got := admitted(&q, "Issue", 100); got != 100 {
		t.Errorf("zero value admitted %d of 100", got)
	}

	q.Throttle(2, "Issue")
	if got := admitted(&q, "Get", 3); got != 3 {
		t.Errorf("an operation not named was throttled: %d of 3 admitted", got)
	}
	if got := admitted(&q, "Issue", 3); got != 1 {
		t.Errorf("throttle of 2 named calls: %d of 3 admitted, want 1", got)
	}
	q.Throttle(1)
	if q.Admit("Get") || !q.Admit("Issue") {
		t.Error("a throttle naming no operation should refuse the next call of any")
	}

	// A rate so slow that no token comes back during the test.
	q.SetRate(0.001, 3)
	if got := admitted(&q, "Issue", 5); got != 3 {
		t.Errorf("bucket of 3: %d of 5 admitted", got)
	}
	if got := admitted(&q, "Get", 5); got != 3 {
		t.Errorf("each operation has its own bucket: %d of 5 admitted, want 3", got)
	}
	q.SetRate(0.001, 3)
	if got := admitted(&q, "Issue", 5); got != 3 {
		t.Errorf("SetRate refills every bucket: %d of 5 admitted, want 3", got)
	}
	q.SetRate(0, 0)
	if got := admitted(&q, "Issue", 50); got != 50 {
		t.Errorf("rate off: %d of 50 admitted", got)
	}
}
