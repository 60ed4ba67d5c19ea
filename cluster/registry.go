package cluster

import (
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
	owners   *ownerTable
	// applyMu serialises the sources' updates.
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
		return nil, fmt.Errorf("%w %q (known: %s)", ErrUnknown, id, r.knownIDs())
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

func (r *Registry) knownIDs() string {
	ids := []string{r.cfg.LocalID}
	for _, c := range r.All()[1:] {
		ids = append(ids, c.ID)
	}
	return fmt.Sprint(ids)
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

// apply makes the remote clusters from src match want: new IDs are added,
// changed ones replaced make-before-break, missing ones removed. owners
// tracks which source owns each ID: the first to claim it.
func (r *Registry) apply(src source, want map[string]desired, owners *ownerTable) {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	for id := range want {
		switch {
		case id == r.cfg.LocalID:
			r.log.Warn("remote cluster configuration names the local cluster; ignored", "source", src, "cluster", id)
			delete(want, id)
		case !owners.claim(id, src):
			r.log.Warn("two remote cluster configurations claim one cluster; the first wins", "cluster", id, "ignored", src, "owner", owners.owner(id))
			delete(want, id)
		}
	}
	for _, id := range owners.release(src, want) {
		r.remove(id, src)
	}
	for id, d := range want {
		if owners.unchanged(id, d.kubeconfig) {
			continue
		}
		owners.set(id, d.kubeconfig)
		r.replace(id, d.rc, src)
	}
}

// replace builds a new view of cluster id and, once it has synced (or the
// sync timeout has passed), makes it the serving one and stops the old:
// requests keep being served by the old client meanwhile.
func (r *Registry) replace(id string, rc *rest.Config, src source) {
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
		synced := c.WaitSynced(ctx)
		cancel()
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

// ownerTable remembers which source owns each remote cluster ID and the
// configuration it last applied.
type ownerTable struct {
	mu     sync.Mutex
	owners map[string]source
	config map[string][]byte
}

func newOwnerTable() *ownerTable {
	return &ownerTable{owners: map[string]source{}, config: map[string][]byte{}}
}

func (o *ownerTable) claim(id string, src source) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if cur, ok := o.owners[id]; ok && cur != src {
		return false
	}
	o.owners[id] = src
	return true
}

func (o *ownerTable) owner(id string) source {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.owners[id]
}

// release drops src's IDs that want no longer has and returns them.
func (o *ownerTable) release(src source, want map[string]desired) []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var gone []string
	for id, s := range o.owners {
		if _, ok := want[id]; s == src && !ok {
			delete(o.owners, id)
			delete(o.config, id)
			gone = append(gone, id)
		}
	}
	return gone
}

func (o *ownerTable) unchanged(id string, kubeconfig []byte) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	prev, ok := o.config[id]
	return ok && string(prev) == string(kubeconfig)
}

func (o *ownerTable) set(id string, kubeconfig []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.config[id] = kubeconfig
}

// pollInterval is how often the kubeconfig directory is re-read.
const pollInterval = 5 * time.Second
