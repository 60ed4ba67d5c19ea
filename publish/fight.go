package publish

import (
	"crypto/sha256"
	"time"
)

// pendingGrace is how long the publisher waits for its own write to show
// up in its cache before it looks at the object again regardless (a
// relist can skip the write's own event).
const pendingGrace = 5 * time.Second

// guard keeps one object's write history, so that a competing writer (for
// example istiod with its CA left on, rewriting root-cert.pem as soon as it
// changes) is told from an isolated edit, and is not fought in a loop.
//
// The rule: when the object no longer holds what the publisher last wrote
// there, and the bundle has not changed since, someone else changed (or
// deleted) it. The first such change is repaired at once; each further one
// within window of the publisher's previous write is a conflict and
// doubles the pause before the next write, from base up to max. A change
// later than window after the publisher's write starts counting afresh.
// Against a writer that reverts every write at once, the publisher's
// writes fall at 0, 0, base, 3 base, 7 base, ...: at most
// 2 + log2(T/base + 1) writes in the first T of the fight while the pause
// is below max, then one per max. An isolated edit is repaired at once.
type guard struct {
	lastWrite time.Time
	lastSum   [32]byte
	// pendingRV is the resourceVersion of the publisher's last write until
	// the cache has shown it: until then the cache is stale, not changed.
	pendingRV string
	// seen are the last resourceVersions the cache showed: the watch
	// event of a write may arrive before the write call returns.
	seen    [8]string
	seenPos int
	// judged: the foreign change after lastWrite has been counted.
	judged    bool
	streak    int
	notBefore time.Time
	writes    int
	// gen is the bundle generation the object was last seen to hold (0:
	// not in sync).
	gen uint64
}

type backoffPolicy struct {
	base, max, window time.Duration
}

// verdict is the guard's answer before a write.
type verdict struct {
	// wait > 0: do not write now; look again after wait.
	wait time.Duration
	// conflict: a competing writer was detected just now; the next write
	// waits delay.
	conflict bool
	delay    time.Duration
	streak   int
}

func sum(b []byte) [32]byte { return sha256.Sum256(b) }

// admit is asked when the object differs from the bundle (desired is the
// bundle's hash).
func (g *guard) admit(now time.Time, desired [32]byte, p backoffPolicy) verdict {
	if g.pendingRV != "" {
		if since := now.Sub(g.lastWrite); since < pendingGrace {
			return verdict{wait: pendingGrace - since}
		}
		g.pendingRV = ""
	}
	var v verdict
	if !g.lastWrite.IsZero() && g.lastSum == desired && !g.judged {
		// What the publisher wrote, for the same bundle, was changed or
		// deleted by someone else.
		g.judged = true
		if now.Sub(g.lastWrite) > p.window {
			g.streak = 1
		} else {
			g.streak++
		}
		if g.streak >= 2 {
			d := p.base
			for i := 2; i < g.streak && d < p.max; i++ {
				d *= 2
			}
			d = min(d, p.max)
			g.notBefore = now.Add(d)
			v.conflict, v.delay = true, d
		}
		v.streak = g.streak
	}
	if now.Before(g.notBefore) {
		v.wait = g.notBefore.Sub(now)
	}
	return v
}

// wrote records a successful write of desired, resulting in
// resourceVersion rv.
func (g *guard) wrote(now time.Time, desired [32]byte, rv string) {
	g.lastWrite, g.lastSum, g.pendingRV, g.judged = now, desired, rv, false
	g.writes++
	for _, s := range g.seen {
		if rv != "" && s == rv {
			g.pendingRV = "" // the cache showed it already
		}
	}
}

// observed is told every resourceVersion the cache shows.
func (g *guard) observed(rv string) {
	if rv == "" {
		return
	}
	if rv == g.pendingRV {
		g.pendingRV = ""
	}
	g.seen[g.seenPos] = rv
	g.seenPos = (g.seenPos + 1) % len(g.seen)
}

// backingOff reports whether writes are being held back now.
func (g *guard) backingOff(now time.Time) bool { return now.Before(g.notBefore) }
