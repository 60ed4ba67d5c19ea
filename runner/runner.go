// Package runner runs the broker's long-running parts (certificate
// renewal, key refreshes, cluster watches, publishers) under one
// lifecycle: they start together, stop together when the broker stops,
// and each declares whether it needs leader election. Parts that serve
// requests run on every replica; parts that write shared state (trust
// bundle publishing, istiod's certificate) run only on the elected leader.
package runner

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Runnable is a long-running part. Run returns when ctx ends (nil) or
// when it cannot go on (an error, which is logged; the part is restarted
// after a pause unless the group is stopping).
type Runnable interface {
	Run(ctx context.Context) error
}

// LeaderElectionRunnable is implemented by parts that say whether they
// need to be the leader; parts that do not implement it run everywhere.
type LeaderElectionRunnable interface {
	NeedLeaderElection() bool
}

// Func adapts a function to Runnable (it runs on every replica).
type Func func(ctx context.Context) error

// Run implements Runnable.
func (f Func) Run(ctx context.Context) error { return f(ctx) }

// Elector decides leadership. Run blocks until ctx ends, calling lead
// with a context that ends when leadership is lost.
type Elector interface {
	Run(ctx context.Context, lead func(ctx context.Context))
}

// AlwaysLeader is the elector of a single replica.
type AlwaysLeader struct{}

// Run implements Elector.
func (AlwaysLeader) Run(ctx context.Context, lead func(ctx context.Context)) { lead(ctx) }

// Group runs runnables.
type Group struct {
	Log     *slog.Logger
	Elector Elector
	// RestartDelay is the pause before a failed part is run again
	// (default 1s).
	RestartDelay time.Duration

	mu      sync.Mutex
	parts   []part
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	started bool
}

type part struct {
	name string
	r    Runnable
}

// Add registers a part. Parts that need no leader and are added after
// Start start at once; parts that need a leader must be added before
// Start.
func (g *Group) Add(name string, r Runnable) {
	g.mu.Lock()
	defer g.mu.Unlock()
	p := part{name, r}
	g.parts = append(g.parts, p)
	if g.started && !needsLeader(r) {
		g.wg.Add(1)
		go func() { defer g.wg.Done(); g.keepRunning(g.ctx, p) }()
	}
}

// Start runs every part: those that need no leader at once, the others
// together whenever this replica leads (one election for all of them).
func (g *Group) Start() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.started {
		return
	}
	if g.Log == nil {
		g.Log = slog.Default()
	}
	if g.Elector == nil {
		g.Elector = AlwaysLeader{}
	}
	if g.RestartDelay <= 0 {
		g.RestartDelay = time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.ctx, g.cancel, g.started = ctx, cancel, true
	var leaderParts []part
	for _, p := range g.parts {
		if needsLeader(p.r) {
			leaderParts = append(leaderParts, p)
			continue
		}
		g.wg.Add(1)
		go func() { defer g.wg.Done(); g.keepRunning(ctx, p) }()
	}
	if len(leaderParts) == 0 {
		return
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		g.Elector.Run(ctx, func(lctx context.Context) {
			var wg sync.WaitGroup
			for _, p := range leaderParts {
				wg.Add(1)
				go func() {
					defer wg.Done()
					g.Log.Info("leading: starting", "part", p.name)
					g.keepRunning(lctx, p)
					g.Log.Info("leading no more: stopped", "part", p.name)
				}()
			}
			wg.Wait()
		})
	}()
}

func needsLeader(r Runnable) bool {
	l, ok := r.(LeaderElectionRunnable)
	return ok && l.NeedLeaderElection()
}

func (g *Group) keepRunning(ctx context.Context, p part) {
	for ctx.Err() == nil {
		err := p.r.Run(ctx)
		if ctx.Err() != nil {
			return
		}
		g.Log.Error("part stopped; restarting", "part", p.name, "error", err, "in", g.RestartDelay.String())
		select {
		case <-ctx.Done():
		case <-time.After(g.RestartDelay):
		}
	}
}

// Stop ends every part and waits for them.
func (g *Group) Stop() {
	g.mu.Lock()
	cancel := g.cancel
	g.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	g.wg.Wait()
}
