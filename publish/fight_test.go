package publish

import (
	"math"
	"testing"
	"time"
)

var testPolicy = backoffPolicy{base: time.Second, max: 5 * time.Minute, window: 10 * time.Minute}

func TestGuardIsolatedEditIsRepairedAtOnce(t *testing.T) {
	var g guard
	t0 := time.Unix(1000, 0)
	a := sum([]byte("A"))
	if v := g.admit(t0, a, testPolicy); v.wait != 0 || v.conflict {
		t.Fatalf("first write: %+v", v)
	}
	g.wrote(t0, a, "1")
	g.observed("1")
	// Hand-edited a minute later: repaired at once, not a conflict.
	if v := g.admit(t0.Add(time.Minute), a, testPolicy); v.wait != 0 || v.conflict {
		t.Fatalf("isolated edit: %+v", v)
	}
	g.wrote(t0.Add(time.Minute), a, "3")
	g.observed("3")
	// Edited again an hour later: outside the window, again an isolated edit.
	if v := g.admit(t0.Add(time.Hour), a, testPolicy); v.wait != 0 || v.conflict {
		t.Fatalf("edit an hour later: %+v", v)
	}
}

func TestGuardCompetingWriterBacksOffExponentially(t *testing.T) {
	var g guard
	now := time.Unix(1000, 0)
	a := sum([]byte("A"))
	rv := 0
	write := func() {
		rv++
		g.wrote(now, a, string(rune('a'+rv)))
		g.observed(string(rune('a' + rv)))
	}
	write() // initial
	var delays []time.Duration
	writes := 1
	// A writer that reverts every write 10ms later, for 20 minutes.
	end := now.Add(20 * time.Minute)
	for now.Before(end) {
		now = now.Add(10 * time.Millisecond)
		v := g.admit(now, a, testPolicy)
		if v.conflict {
			delays = append(delays, v.delay)
		}
		if v.wait > 0 {
			now = now.Add(v.wait)
			// Looking again after the wait: write now.
			if v2 := g.admit(now, a, testPolicy); v2.wait != 0 || v2.conflict {
				t.Fatalf("after the wait: %+v", v2)
			}
		}
		write()
		writes++
	}
	want := []time.Duration{1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300}
	for i, d := range want {
		if i >= len(delays) || delays[i] != d*time.Second {
			t.Fatalf("delays %v, want them to start %v seconds", delays, want)
		}
	}
	// 20 minutes: 2 immediate writes, 9 doublings up to 256s (511s in
	// all), then one per 5 minutes.
	if writes > 2+9+int(math.Ceil((20*60-511)/300.0))+1 {
		t.Fatalf("%d writes in 20 minutes of fighting", writes)
	}
	t.Logf("%d writes in 20 minutes against a writer reverting each at once; delays %v", writes, delays)
}

func TestGuardBundleChangeIsNotAConflict(t *testing.T) {
	var g guard
	t0 := time.Unix(1000, 0)
	a, b := sum([]byte("A")), sum([]byte("B"))
	g.wrote(t0, a, "1")
	g.observed("1")
	for i := 1; i <= 3; i++ {
		// Each time, what is there differs because the bundle changed.
		desired := b
		if i%2 == 0 {
			desired = a
		}
		if v := g.admit(t0.Add(time.Duration(i)*time.Millisecond), desired, testPolicy); v.wait != 0 || v.conflict {
			t.Fatalf("bundle change %d: %+v", i, v)
		}
		g.wrote(t0.Add(time.Duration(i)*time.Millisecond), desired, "x")
		g.observed("x")
	}
}

func TestGuardWaitsForItsOwnWriteToShowInTheCache(t *testing.T) {
	var g guard
	t0 := time.Unix(1000, 0)
	a := sum([]byte("A"))
	g.wrote(t0, a, "7")
	// The cache still shows the old object: not a foreign change.
	v := g.admit(t0.Add(time.Second), a, testPolicy)
	if v.wait != pendingGrace-time.Second || v.conflict {
		t.Fatalf("stale cache: %+v", v)
	}
	// After the grace the object is looked at as it is (a relist may have
	// skipped the write's own event).
	v = g.admit(t0.Add(pendingGrace+time.Millisecond), a, testPolicy)
	if v.wait != 0 || v.conflict || v.streak != 1 {
		t.Fatalf("after the grace: %+v", v)
	}
	// Seeing the write clears the wait.
	g.wrote(t0.Add(10*time.Second), a, "9")
	g.observed("9")
	if v := g.admit(t0.Add(10*time.Second+time.Millisecond), a, testPolicy); v.wait != time.Second || !v.conflict || v.delay != time.Second {
		t.Fatalf("second foreign change: %+v", v)
	}
}

func TestGuardWriteSeenBeforeTheCallReturned(t *testing.T) {
	var g guard
	t0 := time.Unix(1000, 0)
	a := sum([]byte("A"))
	g.wrote(t0, a, "5")
	g.observed("5")
	// The next write's event arrives first, then a rival's, then the
	// write call returns.
	g.observed("6")
	g.observed("7")
	g.wrote(t0.Add(time.Second), a, "6")
	if v := g.admit(t0.Add(time.Second+time.Millisecond), a, testPolicy); v.wait != 0 || v.streak != 1 {
		t.Fatalf("the rival's change after a write already seen: %+v, want it judged (and repaired) at once", v)
	}
}
