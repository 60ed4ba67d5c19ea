package runner

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

type counting struct {
	runs    atomic.Int32
	running atomic.Int32
	leader  bool
	fail    bool
}

func (c *counting) Run(ctx context.Context) error {
	c.runs.Add(1)
	c.running.Add(1)
	defer c.running.Add(-1)
	if c.fail {
		return errors.New("broken")
	}
	<-ctx.Done()
	return nil
}

func (c *counting) NeedLeaderElection() bool { return c.leader }

// gate is an elector that leads while its channel is open.
type gate struct{ leading chan struct{} }

func (g gate) Run(ctx context.Context, lead func(context.Context)) {
	select {
	case <-ctx.Done():
		return
	case <-g.leading:
	}
	lead(ctx)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLeaderPartsRunOnlyWhileLeading(t *testing.T) {
	everywhere, leaderOnly := &counting{}, &counting{leader: true}
	g := gate{leading: make(chan struct{})}
	grp := &Group{Elector: g}
	grp.Add("everywhere", everywhere)
	grp.Add("leader-only", leaderOnly)
	grp.Start()
	eventually(t, "the part that needs no leader", func() bool { return everywhere.running.Load() == 1 })
	time.Sleep(50 * time.Millisecond)
	if leaderOnly.runs.Load() != 0 {
		t.Fatal("a leader part ran before this replica led")
	}
	close(g.leading)
	eventually(t, "the leader part", func() bool { return leaderOnly.running.Load() == 1 })
	grp.Stop()
	if everywhere.running.Load() != 0 || leaderOnly.running.Load() != 0 {
		t.Fatal("parts still running after Stop")
	}
}

func TestFailedPartIsRestarted(t *testing.T) {
	broken := &counting{fail: true}
	grp := &Group{RestartDelay: 10 * time.Millisecond}
	grp.Add("broken", broken)
	grp.Start()
	eventually(t, "restarts", func() bool { return broken.runs.Load() >= 3 })
	grp.Stop()
}

func TestPartAddedAfterStartRuns(t *testing.T) {
	grp := &Group{}
	grp.Start()
	late := &counting{}
	grp.Add("late", late)
	eventually(t, "the late part", func() bool { return late.running.Load() == 1 })
	grp.Stop()
}
