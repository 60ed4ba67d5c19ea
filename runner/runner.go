// Package runner runs the broker's long-running parts (certificate
// renewal, key refreshes, cluster watches, publishers) under one
// lifecycle: they start together, stop together when the broker stops,
// and each declares whether it needs leader election. Parts that serve
// requests run on every replica; parts that write shared state (trust
// bundle publishing, istiod's certificate) run only on the elected leader.
package runner

import (
	"context"
	"errors"
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

// Add registers a part; parts added after Start start at once.
func (g *Group) Add(name string, r Runnable) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.parts = append(g.parts, part{name, r})
	if g.started {
		g.startLocked(part{name, r})
	}
}

var errStopped = errors.New("runner group stopped")

// Start runs every part: those that need no leader at once, the others
// whenever this replica leads.
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
	ctx, cancel := context.WithCancelCause(context.Background())
	g.cancel = func() { cancel(errStopped) }
	g.ctx = ctx
	g.started = true
	for _, p := range g.parts {
		g.startLocked(p)
	}
}

func needsLeader(r Runnable) bool {
	l, ok := r.(LeaderElectionRunnable)
	return ok && l.NeedLeaderElection()
}

func (g *Group) startLocked(p part) {
	g.wg.Add(1)
	if !needsLeader(p.r) {
		go func() { defer g.wg.Done(); g.keepRunning(g.ctx, p) }()
		return
	}
	go func() {
		defer g.wg.Done()
		g.Elector.Run(g.ctx, func(ctx context.Context) {
			g.Log.Info("leading: starting", "part", p.name)
			g.keepRunning(ctx, p)
			g.Log.Info("no longer leading: stopped", "part", p.name)
		})
	}()
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
