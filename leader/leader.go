// Package leader elects one replica of a broker install, with a
// coordination.k8s.io Lease in the local cluster (client-go's leader
// election), to run the parts that write shared state: publishing the
// trust bundle, keeping istiod's certificate. Serving certificates needs
// no leader; every replica does it.
package leader

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Config configures an Elector.
type Config struct {
	Client kubernetes.Interface
	// Namespace and Name of the Lease (one per broker install).
	Namespace, Name string
	// Identity of this replica (default: hostname and PID).
	Identity string
	// LeaseDuration, RenewDeadline, RetryPeriod: client-go's; defaults
	// 15s, 10s, 2s (a new leader within about 15 s of the old one's
	// disappearance).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	Log                                       *slog.Logger
}

// Elector implements runner.Elector with a Lease.
type Elector struct {
	cfg     Config
	lock    observedLock
	leading atomic.Bool
	failing atomic.Pointer[failure]
}

// New returns an elector.
func New(cfg Config) (*Elector, error) {
	if cfg.Client == nil || cfg.Namespace == "" || cfg.Name == "" {
		return nil, fmt.Errorf("leader election: client, namespace and name are required")
	}
	if cfg.Identity == "" {
		host, _ := os.Hostname()
		cfg.Identity = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if cfg.LeaseDuration <= 0 {
		cfg.LeaseDuration = 15 * time.Second
	}
	if cfg.RenewDeadline <= 0 {
		cfg.RenewDeadline = 10 * time.Second
	}
	if cfg.RetryPeriod <= 0 {
		cfg.RetryPeriod = 2 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, cfg.Namespace, cfg.Name, nil, cfg.Client.CoordinationV1(),
		resourcelock.ResourceLockConfig{Identity: cfg.Identity})
	if err != nil {
		return nil, fmt.Errorf("leader election: %w", err)
	}
	e := &Elector{cfg: cfg}
	e.lock = observedLock{Interface: lock, e: e}
	return e, nil
}

func (e *Elector) lease() string { return e.cfg.Namespace + "/" + e.cfg.Name }

// Run campaigns until ctx ends; lead runs while this replica leads, with a
// context that ends when leadership is lost. After a loss it campaigns
// again.
func (e *Elector) Run(ctx context.Context, lead func(ctx context.Context)) {
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            e.lock,
			LeaseDuration:   e.cfg.LeaseDuration,
			RenewDeadline:   e.cfg.RenewDeadline,
			RetryPeriod:     e.cfg.RetryPeriod,
			ReleaseOnCancel: true,
			Name:            e.cfg.Name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					e.leading.Store(true)
					e.cfg.Log.Info("leading", "lease", e.lease(), "identity", e.cfg.Identity)
					lead(ctx)
				},
				OnStoppedLeading: func() {
					// Also called when leadership was never won.
					if e.leading.Swap(false) && ctx.Err() == nil {
						e.cfg.Log.Error("lost leadership: trust publishing and istiod's certificate stop here until this replica or another leads", "lease", e.lease(), "identity", e.cfg.Identity)
					} else {
						e.cfg.Log.Info("not leading", "lease", e.lease(), "identity", e.cfg.Identity)
					}
				},
			},
		})
		if err != nil {
			e.cfg.Log.Error("leader election", "error", err)
			return
		}
		le.Run(ctx)
	}
}

// Identity is this replica's name in the Lease.
func (e *Elector) Identity() string { return e.cfg.Identity }
