// Package publish publishes the mesh's trust bundle into every cluster the
// broker serves: its one job is to keep the ConfigMap istio-ca-root-cert
// (key root-cert.pem, the whole bundle) in every namespace of every
// cluster, and optionally a ClusterTrustBundle, equal to the current trust
// bundle.
//
// For each cluster of the registry (clusters added later included; the
// work on a removed or replaced cluster stops) it watches namespaces and
// only the istio-ca-root-cert ConfigMaps, and keeps each in-scope
// namespace's ConfigMap equal to the bundle: created for a new namespace,
// recreated when deleted, its root-cert.pem repaired when it differs
// (every other key, label and annotation left alone), all of them updated
// when the bundle changes. Namespaces being deleted, and with a selector
// those that do not match, are not touched. It compares its cache with the
// bundle before writing, so it makes no writes at steady state, and it
// does not fight another writer in a loop: when someone keeps changing
// what it wrote (istiod with its own CA left on, for example), it backs off
// per object, warns naming the namespace, cluster and last writer, and
// counts it (see Config.BackoffBase).
//
// A Publisher is a runner part that needs leader election: only the
// elected replica writes.
package publish

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/meshca/broker/cluster"
)

// Publisher keeps the trust bundle published; see the package doc.
type Publisher struct {
	cfg    Config
	sel    labels.Selector
	policy backoffPolicy
	log    *slog.Logger
	m      *metrics

	bundleChanged  <-chan struct{}
	clustersChange chan struct{}

	mu      sync.Mutex
	running bool
	workers map[string]*worker
}

// New checks cfg, registers the metrics with cfg.Registerer, subscribes to
// the bundle's and the registry's changes, and returns a publisher that
// does nothing until Run.
func New(cfg Config) (*Publisher, error) {
	cfg.defaults()
	sel, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	p := &Publisher{
		cfg:            cfg,
		sel:            sel,
		policy:         backoffPolicy{base: cfg.BackoffBase, max: cfg.BackoffMax, window: cfg.ConflictWindow},
		log:            cfg.Log.With("part", "trust-publisher"),
		clustersChange: make(chan struct{}, 1),
		workers:        map[string]*worker{},
	}
	if p.m, err = newMetrics(cfg.Registerer, p); err != nil {
		return nil, err
	}
	p.bundleChanged = cfg.Bundle.Subscribe()
	cfg.Clusters.OnChange(func() {
		select {
		case p.clustersChange <- struct{}{}:
		default:
		}
	})
	return p, nil
}

// NeedLeaderElection: only the elected replica writes.
func (p *Publisher) NeedLeaderElection() bool { return true }

// Run publishes until ctx ends (leadership lost or the broker stopping),
// then stops every cluster's watches and returns nil. It starts one
// worker per cluster of the registry, follows the registry's changes
// (a new cluster gets a worker; a removed one's worker stops; a replaced
// one's worker is stopped and a new one started on the new client), and
// on each bundle change has every worker compare all its objects again.
// Run may be called again after it returned (leadership regained).
func (p *Publisher) Run(ctx context.Context) error {
	p.mu.Lock()
	if p.running {
		p.mu.Unlock()
		return errors.New("trust publisher: already running")
	}
	p.running = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.running = false
		p.mu.Unlock()
	}()

	if s := p.cfg.Bundle.Current(); s != nil {
		p.log.Info("publishing the trust bundle", "generation", s.Generation, "roots", len(s.Roots), "selector", p.cfg.NamespaceSelector, "clusterTrustBundle", p.cfg.ClusterTrustBundleName)
	}
	p.syncClusters(ctx)
	for {
		select {
		case <-ctx.Done():
			p.stopAll()
			return nil
		case <-p.clustersChange:
			p.syncClusters(ctx)
		case <-p.bundleChanged:
			if s := p.cfg.Bundle.Current(); s != nil {
				p.log.Info("trust bundle changed; publishing it", "generation", s.Generation, "roots", len(s.Roots))
			}
			for _, w := range p.currentWorkers() {
				w.enqueueAll()
			}
		}
	}
}

// syncClusters makes the workers match the registry.
func (p *Publisher) syncClusters(ctx context.Context) {
	want := map[string]*cluster.Cluster{}
	for _, c := range p.cfg.Clusters.All() {
		want[c.ID] = c
	}
	p.mu.Lock()
	var stop []*worker
	var start []*worker
	for id, w := range p.workers {
		if c, ok := want[id]; !ok || c != w.c {
			stop = append(stop, w)
			delete(p.workers, id)
		}
	}
	for id, c := range want {
		if _, ok := p.workers[id]; ok {
			continue
		}
		w, err := newWorker(p, c)
		if err != nil {
			p.log.Error("cannot publish to cluster", "cluster", id, "error", err)
			continue
		}
		p.workers[id] = w
		start = append(start, w)
	}
	p.mu.Unlock()
	for _, w := range stop {
		_, replaced := want[w.id]
		w.log.Info("stopping publishing to cluster", "replaced", replaced, "removed", !replaced)
		w.stop()
	}
	for _, w := range start {
		w.log.Info("publishing to cluster")
		w.start(ctx)
	}
}

func (p *Publisher) stopAll() {
	p.mu.Lock()
	ws := make([]*worker, 0, len(p.workers))
	for _, w := range p.workers {
		ws = append(ws, w)
	}
	p.workers = map[string]*worker{}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, w := range ws {
		wg.Add(1)
		go func() { defer wg.Done(); w.stop() }()
	}
	wg.Wait()
	p.log.Info("trust publisher stopped")
}

func (p *Publisher) currentWorkers() []*worker {
	p.mu.Lock()
	defer p.mu.Unlock()
	ws := make([]*worker, 0, len(p.workers))
	for _, id := range sortedKeys(p.workers) {
		ws = append(ws, p.workers[id])
	}
	return ws
}

// ClusterStatus is what the publisher has published in one cluster.
type ClusterStatus struct {
	Cluster string
	// Namespaces in scope (selected, not terminating) seen so far, and of
	// those how many hold the current bundle.
	Namespaces, InSync int
	// ConfigMapGeneration is the bundle generation every in-scope
	// namespace holds (0 while any is missing or out of date).
	ConfigMapGeneration uint64
	// CTBVersion is the ClusterTrustBundle API version written ("" when
	// not configured, not served, or not discovered yet); CTBGeneration
	// the generation it holds (0: not in sync).
	CTBServed     bool
	CTBVersion    string
	CTBGeneration uint64
	// BackingOff counts objects whose rewrite is held back by a
	// competing writer.
	BackingOff int
	// Writes and Conflicts since this worker started.
	Writes, Conflicts int
}

// Status reports every cluster being published to (empty when not
// running, for example on a replica that does not lead).
func (p *Publisher) Status() []ClusterStatus {
	var gen uint64
	if s := p.cfg.Bundle.Current(); s != nil {
		gen = s.Generation
	}
	var out []ClusterStatus
	for _, w := range p.currentWorkers() {
		out = append(out, w.status(gen))
	}
	return slices.Clip(out)
}
