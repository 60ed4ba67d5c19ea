package leader

import (
	"context"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// observedLock is the Lease lock with every API call's outcome recorded,
// so that an election that cannot proceed (the Lease's namespace deleted,
// RBAC lost, the API server unreachable) is seen as such: client-go's
// elector only retries and logs.
type observedLock struct {
	resourcelock.Interface
	e *Elector
}

func (l observedLock) Get(ctx context.Context) (*resourcelock.LeaderElectionRecord, []byte, error) {
	rec, raw, err := l.Interface.Get(ctx)
	// Not found is how every election starts: the Create that follows
	// tells whether it works.
	if !apierrors.IsNotFound(err) {
		l.e.observe(err, false)
	}
	return rec, raw, err
}

func (l observedLock) Create(ctx context.Context, ler resourcelock.LeaderElectionRecord) error {
	err := l.Interface.Create(ctx, ler)
	l.e.observe(err, apierrors.IsAlreadyExists(err))
	return err
}

func (l observedLock) Update(ctx context.Context, ler resourcelock.LeaderElectionRecord) error {
	err := l.Interface.Update(ctx, ler)
	// A conflict is another replica's write: contention, not failure.
	l.e.observe(err, apierrors.IsConflict(err))
	return err
}

// failure is a streak of failed Lease calls.
type failure struct {
	since time.Time
	err   string
}

// observe records one Lease call: expected errors are part of a working
// election.
func (e *Elector) observe(err error, expected bool) {
	if err == nil || expected {
		if f := e.failing.Swap(nil); f != nil {
			e.cfg.Log.Info("leader election working again", "lease", e.lease(), "failedFor", time.Since(f.since).Round(time.Millisecond).String())
		}
		return
	}
	if e.failing.CompareAndSwap(nil, &failure{since: time.Now(), err: err.Error()}) {
		e.cfg.Log.Error("leader election failing: while no replica leads, the trust bundle is not published and istiod's certificate is not kept",
			"lease", e.lease(), "identity", e.cfg.Identity, "error", err)
	}
}

// Leading reports whether this replica holds the Lease.
func (e *Elector) Leading() bool { return e.leading.Load() }

// Failing is how long the Lease calls have been failing (0 when they
// work) and the first error of the streak.
func (e *Elector) Failing() (time.Duration, string) {
	if f := e.failing.Load(); f != nil {
		return time.Since(f.since), f.err
	}
	return 0, ""
}
