package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"k8s.io/client-go/rest"
)

// ErrUnknown means no cluster has the requested ID.
var ErrUnknown = errors.New("unknown cluster")

// RegistryConfig configures a Registry.
type RegistryConfig struct {
	// LocalID is the broker's own cluster as the Istio agent names it.
	LocalID string
	// Local is the REST configuration of the broker's own cluster.
	Local *rest.Config
	// Aliases maps another name of a cluster to its ID (Istio's
	// meshConfig cluster aliases), so agents that send the old name are
	// served by the renamed cluster.
	Aliases map[string]string
	// Remote secrets: Secrets labelled istio/multiCluster=true in this
	// namespace of the local cluster (empty: none are watched).
	SecretNamespace string
	// KubeconfigDir holds one kubeconfig file per remote cluster, named
	// after the cluster ID, for installs without Secrets (empty: none).
	KubeconfigDir string
	// KubeconfigPolicy says what a remote kubeconfig may do.
	KubeconfigPolicy KubeconfigPolicy
	// Options of every cluster's view.
	Options Options
}

// Registry is the set of clusters the broker serves.
type Registry struct {
	cfg   RegistryConfig
	log   *slog.Logger
	local *Cluster

	mu       sync.RWMutex
	remotes  map[string]*Cluster // by ID, the one serving
	pending  map[string]*Cluster // by ID, built and syncing, to replace remotes[ID]
	newView  func(id string, rc *rest.Config) (*Cluster, error)
	onChange []func()
	// owners is guarded by applyMu, which serialises the sources'
	// updates.
	owners  *ownerTable
	applyMu sync.Mutex
}

// NewRegistry builds the registry and the local cluster's view (no I/O).
func NewRegistry(cfg RegistryConfig) (*Registry, error) {
	cfg.Options.defaults()
	if cfg.LocalID == "" {
		return nil, errors.New("cluster registry: the local cluster ID is required")
	}
	if cfg.Local == nil {
		return nil, errors.New("cluster registry: the local cluster's configuration is required")
	}
	for alias, id := range cfg.Aliases {
		if alias == "" || id == "" || alias == id {
			return nil, fmt.Errorf("cluster registry: alias %q -> %q is not valid", alias, id)
		}
	}
	r := &Registry{cfg: cfg, log: cfg.Options.Log, remotes: map[string]*Cluster{}, pending: map[string]*Cluster{}, owners: newOwnerTable()}
	r.newView = func(id string, rc *rest.Config) (*Cluster, error) { return New(id, rc, cfg.Options) }
	local, err := r.newView(cfg.LocalID, cfg.Local)
	if err != nil {
		return nil, err
	}
	r.local = local
	return r, nil
}

// Local is the broker's own cluster.
func (r *Registry) Local() *Cluster { return r.local }

// Get returns the cluster an agent's clusterid names: empty is the local
// cluster; aliases are resolved.
func (r *Registry) Get(id string) (*Cluster, error) {
	if a, ok := r.cfg.Aliases[id]; ok {
		id = a
	}
	if id == "" || id == r.cfg.LocalID {
		return r.local, nil
	}
	r.mu.RLock()
	c := r.remotes[id]
	r.mu.RUnlock()
	if c == nil {
		// Only the requested ID: the message reaches unauthenticated
		// callers, who must not learn which clusters the broker serves.
		return nil, fmt.Errorf("%w %q", ErrUnknown, id)
	}
	return c, nil
}

// All returns every serving cluster, local first.
func (r *Registry) All() []*Cluster {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := []*Cluster{r.local}
	ids := make([]string, 0, len(r.remotes))
	for id := range r.remotes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		out = append(out, r.remotes[id])
	}
	return out
}

// Run starts the local cluster and the remote-cluster sources and keeps
// them current until ctx ends; then every cluster is stopped. It is a
// runner that needs no leader: every replica serves every cluster.
func (r *Registry) Run(ctx context.Context) error {
	r.local.Start()
	var wg sync.WaitGroup
	if r.cfg.SecretNamespace != "" {
		wg.Add(1)
		go func() { defer wg.Done(); r.watchSecrets(ctx) }()
	}
	if r.cfg.KubeconfigDir != "" {
		wg.Add(1)
		go func() { defer wg.Done(); r.watchDir(ctx) }()
	}
	<-ctx.Done()
	wg.Wait()
	r.mu.Lock()
	all := []*Cluster{r.local}
	for _, c := range r.remotes {
		all = append(all, c)
	}
	for _, c := range r.pending {
		all = append(all, c)
	}
	r.remotes, r.pending = map[string]*Cluster{}, map[string]*Cluster{}
	r.mu.Unlock()
	for _, c := range all {
		c.Stop()
	}
	return nil
}

// NeedLeaderElection: every replica serves every cluster.
func (r *Registry) NeedLeaderElection() bool { return false }

// Ready reports whether the broker can serve its own cluster: synced, or
// past the sync timeout (it then verifies by TokenReview). Remote
// clusters never hold readiness: one that does not sync is reported
// Failed in logs and metrics and verified by TokenReview.
func (r *Registry) Ready() bool {
	s := r.local.State()
	return s == Synced || s == Failed
}

// OnChange registers f to run after the set of clusters changed.
func (r *Registry) OnChange(f func()) {
	r.mu.Lock()
	r.onChange = append(r.onChange, f)
	r.mu.Unlock()
}

// source names where a remote cluster's configuration came from, so two
// sources claiming one ID can be told apart.
type source string

// desired is what one source currently says about remote clusters.
type desired struct {
	kubeconfig []byte
	rc         *rest.Config
}

// rank orders the sources claiming one cluster ID; the lowest owns it.
// It depends on the sources alone, never on the order events arrived in,
// so every replica picks the same owner.
type rank struct {
	// dir: the kubeconfig directory is the deployment's own configuration
	// (the same on every replica), and ranks before any Secret, which
	// anyone allowed to write Secrets in the namespace can add.
	dir bool
	// created is the Secret's creationTimestamp: the oldest Secret owns
	// the ID, so a newer one cannot take a cluster over.
	created time.Time
	// name (namespace/name) breaks ties: timestamps have second
	// resolution.
	name string
}

func (a rank) less(b rank) bool {
	switch {
	case a.dir != b.dir:
		return a.dir
	case !a.created.Equal(b.created):
		return a.created.Before(b.created)
	}
	return a.name < b.name
}

// claim is what one source says about one cluster ID.
type claim struct {
	rank rank
	d    desired
	// refused says why this claim can never own the ID ("" if it can).
	refused string
}

// refusal says why no source may claim id: the local cluster, or an
// alias, is resolved before any remote cluster is looked up, so a remote
// secret under either name would never be served, or would shadow the
// real cluster if the resolution ever changed.
func (r *Registry) refusal(id string) string {
	if id == r.cfg.LocalID {
		return "it is the local cluster's ID"
	}
	if target, ok := r.cfg.Aliases[id]; ok {
		return fmt.Sprintf("it is an alias (of %q)", target)
	}
	return ""
}

// apply makes the remote clusters from src match want: its claims are
// recorded and every cluster whose claims changed is reconciled.
func (r *Registry) apply(src source, rk rank, want map[string]desired) {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	r.reconcile(r.setClaims(src, rk, want))
}

// setClaims records what src now says and returns the IDs whose claims
// changed. The caller holds applyMu.
func (r *Registry) setClaims(src source, rk rank, want map[string]desired) map[string]bool {
	changed := map[string]bool{}
	for id, byID := range r.owners.claims {
		if _, ok := want[id]; !ok {
			if _, had := byID[src]; had {
				delete(byID, src)
				if len(byID) == 0 {
					delete(r.owners.claims, id)
				}
				changed[id] = true
			}
		}
	}
	for id, d := range want {
		prev, had := r.owners.claims[id][src]
		if had && !prev.rank.less(rk) && !rk.less(prev.rank) && bytes.Equal(prev.d.kubeconfig, d.kubeconfig) {
			continue
		}
		cl := claim{rank: rk, d: d, refused: r.refusal(id)}
		if cl.refused != "" {
			r.log.Error("remote cluster configuration refused: "+cl.refused, "source", src, "cluster", id)
		}
		if r.owners.claims[id] == nil {
			r.owners.claims[id] = map[source]claim{}
		}
		r.owners.claims[id][src] = cl
		changed[id] = true
	}
	return changed
}

// reconcile gives each of ids to its owner: the lowest-ranked claim that
// is not refused. A new owner, or the owner's new configuration, gets a
// new client (make-before-break, see replace); an ID nobody claims any
// more is removed. The caller holds applyMu.
func (r *Registry) reconcile(ids map[string]bool) {
	sorted := make([]string, 0, len(ids))
	for id := range ids {
		sorted = append(sorted, id)
	}
	sort.Strings(sorted)
	for _, id := range sorted {
		owner, others := r.owners.owner(id)
		cur, serving := r.owners.serving[id]
		if owner == "" {
			if serving {
				delete(r.owners.serving, id)
				r.remove(id, cur.src)
			}
			continue
		}
		if len(others) > 0 {
			r.log.Warn("several remote cluster configurations claim one cluster; the oldest Secret (the kubeconfig directory before any) owns it", "cluster", id, "owner", owner, "ignored", others)
		}
		d := r.owners.claims[id][owner].d
		if serving && cur.src == owner && bytes.Equal(cur.kubeconfig, d.kubeconfig) {
			continue
		}
		rotation := serving && cur.src == owner
		if serving && !rotation {
			r.log.Info("remote cluster handed to the next configuration claiming it", "cluster", id, "from", cur.src, "to", owner)
		}
		r.owners.serving[id] = served{src: owner, kubeconfig: d.kubeconfig}
		r.replace(id, d.rc, owner, rotation)
	}
}

// replace builds a new view of cluster id and makes it the serving one
// once it has synced; the old one keeps serving meanwhile and is stopped
// after the swap. When the new view has not synced within the sync
// timeout:
//   - a rotation (the same source's new credentials) while the old view
//     is synced keeps the old one: the new credential is logged as failed
//     and the new view keeps retrying in the background; it is swapped in
//     if it ever syncs, and dropped when the source changes again. A
//     broken rotation (a revoked or mistyped token) thus costs nothing
//     but the error log, and a slow one (RBAC granted after the Secret)
//     completes by itself;
//   - a new cluster, a hand-over to another source, or an old view that
//     never synced either swaps at the timeout: there is no working view
//     to keep (or the old owner withdrew), and the new one serves by
//     TokenReview until it syncs.
func (r *Registry) replace(id string, rc *rest.Config, src source, rotation bool) {
	c, err := r.newView(id, rc)
	if err != nil {
		r.log.Error("remote cluster refused", "cluster", id, "source", src, "error", err)
		return
	}
	r.mu.Lock()
	if old := r.pending[id]; old != nil {
		go old.Stop()
	}
	r.pending[id] = c
	_, existed := r.remotes[id]
	r.mu.Unlock()
	c.Start()
	r.log.Info("remote cluster configuration received; syncing", "cluster", id, "source", src, "replacing", existed)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.Options.SyncTimeout)
		synced := waitSyncedOrStopped(ctx, c)
		cancel()
		if !synced {
			r.mu.RLock()
			current, old := r.pending[id] == c, r.remotes[id]
			r.mu.RUnlock()
			if !current {
				return // replaced or removed meanwhile
			}
			if rotation && old != nil && old.State() == Synced {
				_, reason := c.Staleness()
				r.log.Error("remote cluster's new credential failed: not synced within the sync timeout; the old client keeps serving, the new one keeps retrying and replaces it once it syncs",
					"cluster", id, "source", src, "timeout", r.cfg.Options.SyncTimeout, "error", reason)
				if !waitSyncedOrStopped(context.Background(), c) {
					return // replaced, removed or stopped before it synced
				}
				synced = true
			}
		}
		r.mu.Lock()
		if r.pending[id] != c {
			r.mu.Unlock()
			return // replaced or removed meanwhile
		}
		delete(r.pending, id)
		old := r.remotes[id]
		r.remotes[id] = c
		hooks := slices.Clone(r.onChange)
		r.mu.Unlock()
		if old != nil {
			old.Stop()
		}
		if synced {
			r.log.Info("remote cluster serving", "cluster", id, "source", src, "issuer", c.Issuer())
		} else {
			r.log.Error("remote cluster serving before it synced (sync timeout); its tokens are verified by TokenReview until it syncs", "cluster", id, "source", src, "timeout", r.cfg.Options.SyncTimeout)
		}
		for _, h := range hooks {
			h()
		}
	}()
}

// waitSyncedOrStopped waits until c synced (true), or was stopped or ctx
// ended (false).
func waitSyncedOrStopped(ctx context.Context, c *Cluster) bool {
	select {
	case <-c.synced:
		return true
	case <-c.done:
		return false
	case <-ctx.Done():
		return false
	}
}

func (r *Registry) remove(id string, src source) {
	r.mu.Lock()
	old, pend := r.remotes[id], r.pending[id]
	delete(r.remotes, id)
	delete(r.pending, id)
	hooks := slices.Clone(r.onChange)
	r.mu.Unlock()
	for _, c := range []*Cluster{old, pend} {
		if c != nil {
			go c.Stop()
		}
	}
	r.log.Info("remote cluster removed", "cluster", id, "source", src)
	for _, h := range hooks {
		h()
	}
}

// ownerTable holds every source's claims on remote cluster IDs and what
// the registry applied for each ID. It is guarded by Registry.applyMu.
type ownerTable struct {
	claims  map[string]map[source]claim // by cluster ID, by source
	serving map[string]served           // by cluster ID
}

// served is the configuration applied for an ID (serving or syncing).
type served struct {
	src        source
	kubeconfig []byte
}

func newOwnerTable() *ownerTable {
	return &ownerTable{claims: map[string]map[source]claim{}, serving: map[string]served{}}
}

// owner is the lowest-ranked claim on id that is not refused ("" when
// none), and the other sources whose claims it overrides.
func (o *ownerTable) owner(id string) (source, []source) {
	var best source
	var bestRank rank
	var valid []source
	for src, cl := range o.claims[id] {
		if cl.refused != "" {
			continue
		}
		valid = append(valid, src)
		if best == "" || cl.rank.less(bestRank) {
			best, bestRank = src, cl.rank
		}
	}
	others := slices.DeleteFunc(valid, func(s source) bool { return s == best })
	slices.Sort(others)
	return best, others
}

// pollInterval is how often the kubeconfig directory is re-read.
const pollInterval = 5 * time.Second
