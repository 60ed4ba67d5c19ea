// Package cluster is the broker's live view of the Kubernetes clusters it
// serves: for each cluster its clients, the keys its service-account tokens
// are signed with, and metadata-only caches of the objects tokens are bound
// to (service accounts, pods), kept current by watches. The Registry holds
// the local cluster and the remote ones that Istio remote secrets (or a
// directory of kubeconfigs) name, and swaps a cluster's client without a
// gap when its credentials change. Other packages ask it for a cluster by
// ID and never build Kubernetes clients themselves.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/meshca/broker/authn/jwks"
)

// State is how far a cluster's view is.
type State string

const (
	// Syncing: watches or the issuer's keys are not there yet; requests
	// for the cluster are verified by TokenReview meanwhile.
	Syncing State = "syncing"
	// Synced: tokens can be verified locally and checked against live
	// objects.
	Synced State = "synced"
	// Failed: not synced within the sync timeout; still retrying.
	Failed State = "failed"
	// Stopped: replaced or removed.
	Stopped State = "stopped"
)

// Options are what every cluster's view needs from the broker.
type Options struct {
	// TrustDomain and Audiences configure local token verification.
	TrustDomain spiffeid.TrustDomain
	Audiences   []string
	// QPS and Burst of the cluster's client. The broker's TokenReviews are
	// the only per-request calls; they must not be capped below what the
	// API server serves in a mass restart. Defaults 1000 and 2000.
	QPS   float32
	Burst int
	// SyncTimeout is how long the cluster may take to sync before it is
	// reported Failed (it keeps trying). Default 30s.
	SyncTimeout time.Duration
	// StaleAfter: when the API server has not answered the broker's
	// liveness probe (every second) for this long, the caches may be
	// missing deletions, so local verification stops deciding and tokens
	// go to TokenReview (Unavailable while the API server is unreachable).
	// A shorter blip is ridden out: the API server's own TokenReview cache
	// is 10s stale too. Default 10s.
	StaleAfter time.Duration
	// ReviewQPS and ReviewBurst bound TokenReviews, sent on a client of
	// their own so that a flood of reviews cannot starve the watches and
	// probes of the client's limiter. Defaults 500 and 1000.
	ReviewQPS   float32
	ReviewBurst int
	// MaxObjects caps the pods plus service accounts cached for the
	// cluster. A remote cluster's API server is as trusted as its
	// kubeconfig, and an endless stream of objects must not exhaust the
	// broker's memory: past the cap the cluster stops watching and
	// deciding locally (its tokens go to TokenReview) until it is
	// replaced. Default DefaultMaxObjects.
	MaxObjects int
	// Now is the clock for token checks (tests).
	Now func() time.Time
	Log *slog.Logger
}

// DefaultMaxObjects is above Kubernetes' largest supported cluster
// (150,000 pods) and its service accounts, at roughly 0.5 KiB each.
const DefaultMaxObjects = 250_000

func (o *Options) defaults() {
	if o.QPS == 0 {
		o.QPS = 1000
	}
	if o.Burst == 0 {
		o.Burst = 2000
	}
	if o.ReviewQPS == 0 {
		o.ReviewQPS = 500
	}
	if o.ReviewBurst == 0 {
		o.ReviewBurst = 1000
	}
	if o.SyncTimeout <= 0 {
		o.SyncTimeout = 30 * time.Second
	}
	if o.StaleAfter <= 0 {
		o.StaleAfter = 10 * time.Second
	}
	if len(o.Audiences) == 0 {
		o.Audiences = []string{jwks.DefaultAudience}
	}
	if o.MaxObjects <= 0 {
		o.MaxObjects = DefaultMaxObjects
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
}

// Pod is what the broker keeps of a pod.
type Pod struct {
	Name, Namespace, UID string
	ServiceAccount, Node string
	Terminated, Deleting bool
	// Created is the pod's creationTimestamp (second resolution).
	Created time.Time
	// DeletionTimestamp is set once the pod is being deleted: the time
	// by which it should be gone (the delete call plus its grace period),
	// as the API server sets it. Zero while it is not being deleted.
	DeletionTimestamp time.Time
}

// ServiceAccount is what the broker keeps of a service account.
type ServiceAccount struct {
	Namespace, Name, UID string
	// Created is its creationTimestamp (second resolution): a service
	// account recreated under the same name has a later one.
	Created time.Time
}

// Cluster is one cluster's live view. Its methods are safe for concurrent
// use and never block on the network except Review and VerifyToken.
type Cluster struct {
	ID     string
	Client kubernetes.Interface
	json   kubernetes.Interface
	review kubernetes.Interface
	meta   metadata.Interface
	opts   Options
	log    *slog.Logger

	podInformer cache.SharedIndexInformer
	saInformer  cache.SharedIndexInformer

	verifier atomic.Pointer[jwks.Authenticator]
	issuer   atomic.Value // string

	state       atomic.Value // State
	lastContact atomic.Int64 // unix nanoseconds of the last answered probe
	// failing holds, per informer, the last list/watch error since its
	// last success (nil when healthy); failingSince when it started.
	failing     [2]atomic.Pointer[watchFailure]
	staleReason atomic.Value // string: why the last probe failed, "" if it did not
	// overCapacity is set, for good, once more than MaxObjects objects
	// were cached or listed; the informers are stopped then.
	overCapacity atomic.Pointer[watchFailure]
	// cached counts each kind's objects from its informer's events, so
	// the per-second cap check costs no walk of the caches.
	cached        [2]atomic.Int64
	stopInformers context.CancelFunc
	synced        chan struct{}
	startOnce     sync.Once
	cancel        context.CancelFunc
	done          chan struct{}
}

type watchFailure struct {
	since time.Time
	err   string
}

const (
	kindPods = iota
	kindServiceAccounts
)

var kindNames = [2]string{"pods", "serviceaccounts"}

const (
	indexNodeServiceAccount = "node/ns/sa"
	indexServiceAccount     = "ns/sa"
	resync                  = 0 // watches only; nothing needs periodic relists
)

var serviceAccountsGVR = schema.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}

// New builds a cluster's view from its REST configuration. It does no I/O;
// Start begins watching.
func New(id string, rc *rest.Config, opts Options) (*Cluster, error) {
	opts.defaults()
	rc = rest.CopyConfig(rc)
	rc.QPS, rc.Burst = opts.QPS, opts.Burst
	// Discovery documents and the key set are served as JSON only.
	jsonClient, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: clientset: %w", id, err)
	}
	// Protobuf halves the CPU of decoding watch events and reviews.
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: clientset: %w", id, err)
	}
	mdc, err := metadata.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: metadata client: %w", id, err)
	}
	rrc := rest.CopyConfig(rc)
	rrc.QPS, rrc.Burst = opts.ReviewQPS, opts.ReviewBurst
	reviewClient, err := kubernetes.NewForConfig(rrc)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: review clientset: %w", id, err)
	}
	c := &Cluster{ID: id, Client: cs, json: jsonClient, review: reviewClient, meta: mdc, opts: opts, log: opts.Log.With("cluster", id), synced: make(chan struct{}), done: make(chan struct{})}
	c.state.Store(Syncing)
	c.issuer.Store("")
	c.staleReason.Store("")

	// Informers built directly, not from a factory, so they carry only
	// the index the broker uses (a factory adds a namespace index).
	podLW := &cache.ListWatch{
		ListFunc: func(o metav1.ListOptions) (runtime.Object, error) {
			return cs.CoreV1().Pods(metav1.NamespaceAll).List(context.Background(), o)
		},
		WatchFunc: func(o metav1.ListOptions) (watch.Interface, error) {
			return cs.CoreV1().Pods(metav1.NamespaceAll).Watch(context.Background(), o)
		},
	}
	saLW := &cache.ListWatch{
		ListFunc: func(o metav1.ListOptions) (runtime.Object, error) {
			return mdc.Resource(serviceAccountsGVR).Namespace(metav1.NamespaceAll).List(context.Background(), o)
		},
		WatchFunc: func(o metav1.ListOptions) (watch.Interface, error) {
			return mdc.Resource(serviceAccountsGVR).Namespace(metav1.NamespaceAll).Watch(context.Background(), o)
		},
	}
	c.podInformer = cache.NewSharedIndexInformer(c.tracked(kindPods, podLW), &corev1.Pod{}, resync, cache.Indexers{indexNodeServiceAccount: func(obj any) ([]string, error) {
		p, ok := obj.(*podEntry)
		if !ok || p.node == "" {
			return nil, nil
		}
		return []string{p.node + "/" + p.namespace + "/" + p.serviceAccount}, nil
	}, indexServiceAccount: func(obj any) ([]string, error) {
		p, ok := obj.(*podEntry)
		if !ok || p.serviceAccount == "" {
			return nil, nil
		}
		return []string{p.namespace + "/" + p.serviceAccount}, nil
	}})
	if err := c.podInformer.SetTransform(compactPod); err != nil {
		return nil, fmt.Errorf("cluster %s: pod transform: %w", id, err)
	}
	c.saInformer = cache.NewSharedIndexInformer(c.tracked(kindServiceAccounts, saLW), &metav1.PartialObjectMetadata{}, resync, cache.Indexers{})
	for kind, inf := range []cache.SharedIndexInformer{c.podInformer, c.saInformer} {
		if err := inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) { c.watchFailed(kind, err) }); err != nil {
			return nil, fmt.Errorf("cluster %s: %s watch error handler: %w", id, kindNames[kind], err)
		}
	}
	if err := c.saInformer.SetTransform(compactMetadata); err != nil {
		return nil, fmt.Errorf("cluster %s: service account transform: %w", id, err)
	}
	for kind, inf := range []cache.SharedIndexInformer{c.podInformer, c.saInformer} {
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { c.cached[kind].Add(1) },
			DeleteFunc: func(any) { c.cached[kind].Add(-1) },
		}); err != nil {
			return nil, fmt.Errorf("cluster %s: %s counter: %w", id, kindNames[kind], err)
		}
	}
	return c, nil
}

// tracked wraps a ListWatch so that a successful List or an established
// Watch clears the kind's failure, and a failed one records it at once
// (the reflector's error handler also sees errors that end a watch).
// What is not detected: a watch that stays open and delivers nothing
// (stalled behind a proxy); the probe's authorized list bounds that case
// only while it fails too.
func (c *Cluster) tracked(kind int, lw *cache.ListWatch) *cache.ListWatch {
	return &cache.ListWatch{
		ListFunc: func(o metav1.ListOptions) (runtime.Object, error) {
			obj, err := lw.ListFunc(o)
			if err == nil {
				// A list that would take the cache past the cap is
				// refused before it is stored (a list is served in one
				// response from the watch cache).
				if n, others := meta.LenList(obj), c.cachedExcept(kind); n+others > c.opts.MaxObjects {
					err = c.exceeded(fmt.Sprintf("a list of %s returned %d objects, %d others cached", kindNames[kind], n, others))
					obj = nil
				}
			}
			if err != nil {
				c.watchFailed(kind, err)
			} else {
				c.watchHealthy(kind)
			}
			return obj, err
		},
		WatchFunc: func(o metav1.ListOptions) (watch.Interface, error) {
			o.AllowWatchBookmarks = true
			w, err := lw.WatchFunc(o)
			if err != nil {
				c.watchFailed(kind, err)
			} else {
				c.watchHealthy(kind)
			}
			return w, err
		},
	}
}

// exceeded marks the cluster over capacity and stops its informers, so
// that its caches stop growing; the error says why.
func (c *Cluster) exceeded(what string) error {
	f := &watchFailure{since: time.Now(), err: fmt.Sprintf("%s, more than the %d objects allowed (authn.kubernetes.maxCachedObjects)", what, c.opts.MaxObjects)}
	if c.overCapacity.CompareAndSwap(nil, f) {
		c.log.Error("cluster has more objects than the broker caches; local decisions stop and its tokens go to TokenReview until it is replaced", "reason", f.err)
		if c.stopInformers != nil {
			c.stopInformers()
		}
	}
	return errors.New(c.overCapacity.Load().err)
}

// cachedExcept is the number of cached objects of the other kind.
func (c *Cluster) cachedExcept(kind int) int {
	pods, sas := c.Counts()
	if kind == kindPods {
		return sas
	}
	return pods
}

// checkCapacity is the cap for objects that arrive by watch.
func (c *Cluster) checkCapacity() {
	if pods, sas := c.cached[kindPods].Load(), c.cached[kindServiceAccounts].Load(); int(pods+sas) > c.opts.MaxObjects {
		c.exceeded(fmt.Sprintf("%d pods and %d service accounts cached", pods, sas))
	}
}

func (c *Cluster) watchFailed(kind int, err error) {
	if c.failing[kind].Load() == nil {
		c.failing[kind].Store(&watchFailure{since: time.Now(), err: err.Error()})
		c.log.Warn("list/watch failing; local decisions stop until it succeeds again", "kind", kindNames[kind], "error", err)
	}
}

func (c *Cluster) watchHealthy(kind int) {
	if c.failing[kind].Swap(nil) != nil {
		c.log.Info("list/watch healthy again", "kind", kindNames[kind])
	}
}

// podEntry is what the cache keeps of a pod: a few strings instead of a
// pod (several KiB as sent, over 1 KiB even emptied, since a PodSpec has
// well over a hundred fields).
type podEntry struct {
	name, namespace, uid string
	node, serviceAccount string
	terminated, deleting bool
	// Unix seconds; deletion is 0 while not deleting.
	created, deletion int64
}

// GetObjectMeta lets the cache key the entry by namespace/name.
func (p *podEntry) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Name: p.name, Namespace: p.namespace, UID: types.UID(p.uid)}
}

func compactPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a tombstone, or already compact
	}
	e := &podEntry{
		name: p.Name, namespace: p.Namespace, uid: string(p.UID),
		node: p.Spec.NodeName, serviceAccount: p.Spec.ServiceAccountName,
		terminated: p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed,
		deleting:   p.DeletionTimestamp != nil,
		created:    p.CreationTimestamp.Unix(),
	}
	if p.DeletionTimestamp != nil {
		e.deletion = p.DeletionTimestamp.Unix()
	}
	return e, nil
}

// objectEntry is what the cache keeps of a service account.
type objectEntry struct {
	name, namespace, uid string
	deleting             bool
	created              int64 // unix seconds
}

// GetObjectMeta lets the cache key the entry by namespace/name.
func (o *objectEntry) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Name: o.name, Namespace: o.namespace, UID: types.UID(o.uid)}
}

func compactMetadata(obj any) (any, error) {
	m, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return obj, nil
	}
	return &objectEntry{name: m.Name, namespace: m.Namespace, uid: string(m.UID), deleting: m.DeletionTimestamp != nil, created: m.CreationTimestamp.Unix()}, nil
}

// Start begins watching and fetching the issuer's keys, in the background,
// until Stop.
func (c *Cluster) Start() {
	c.startOnce.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		c.cancel = cancel
		ictx, icancel := context.WithCancel(ctx)
		c.stopInformers = icancel
		go c.podInformer.Run(ictx.Done())
		go c.saInformer.Run(ictx.Done())
		go func() {
			defer close(c.done)
			c.run(ctx)
		}()
	})
}

func (c *Cluster) run(ctx context.Context) {
	start := time.Now()
	c.lastContact.Store(start.UnixNano())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		c.discoverIssuer(ctx)
	}()
	go func() {
		defer wg.Done()
		c.probe(ctx)
	}()
	timeout := time.AfterFunc(c.opts.SyncTimeout, func() {
		if c.State() == Syncing {
			c.state.Store(Failed)
			c.log.Error("cluster not synced in time; its tokens are verified by TokenReview until it is", "timeout", c.opts.SyncTimeout, "issuer", c.issuer.Load())
		}
	})
	defer timeout.Stop()
	if cache.WaitForCacheSync(ctx.Done(), c.podInformer.HasSynced, c.saInformer.HasSynced) {
		// Wait for the issuer too: synced means local verification works.
		for ctx.Err() == nil && c.verifier.Load() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
		if ctx.Err() == nil {
			c.state.Store(Synced)
			close(c.synced)
			c.log.Info("cluster synced", "after", time.Since(start).Round(time.Millisecond).String(), "issuer", c.issuer.Load(),
				"pods", len(c.podInformer.GetStore().ListKeys()), "serviceAccounts", len(c.saInformer.GetStore().ListKeys()))
		}
	}
	if v := c.verifier.Load(); v != nil && ctx.Err() == nil {
		v.Run(ctx) // refreshes the keys until ctx ends
	}
	wg.Wait()
}

// probe sends, every second, an authorized request needing the same
// permissions as the watches: a metadata-only list of pods and of service
// accounts with limit=1 (one object's metadata each, no full decode), so
// that RBAC loss or throttling of the broker's own identity, not only an
// unreachable API server, stops local decisions after StaleAfter.
func (c *Cluster) probe(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := c.meta.Resource(schema.GroupVersionResource{Version: "v1", Resource: "pods"}).List(pctx, metav1.ListOptions{Limit: 1})
		if err == nil {
			_, err = c.meta.Resource(serviceAccountsGVR).List(pctx, metav1.ListOptions{Limit: 1})
		}
		cancel()
		c.checkCapacity()
		switch {
		case err == nil:
			c.lastContact.Store(time.Now().UnixNano())
			c.staleReason.Store("")
		case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
			// A definite answer: the broker may no longer read what its
			// caches hold, so they stop deciding now, not after StaleAfter.
			if stale := time.Now().Add(-c.opts.StaleAfter).UnixNano(); c.lastContact.Load() > stale {
				c.lastContact.Store(stale)
			}
			c.staleReason.Store("probe: " + err.Error())
		default:
			c.staleReason.Store("probe: " + err.Error())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// discoverIssuer learns the cluster's service-account issuer from its
// OpenID discovery document, retrying until it succeeds, and builds the
// local verifier over the cluster's own /openid/v1/jwks.
func (c *Cluster) discoverIssuer(ctx context.Context) {
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		issuer, err := c.fetchIssuer(ctx)
		if err == nil {
			v, verr := jwks.New(jwks.Config{
				ClusterID:   c.ID,
				Issuer:      issuer,
				Audiences:   c.opts.Audiences,
				TrustDomain: c.opts.TrustDomain,
				Fetch:       c.fetchJWKS,
				Source:      "cluster " + c.ID + " /openid/v1/jwks",
				Now:         c.opts.Now,
			})
			if verr == nil {
				if rerr := v.Refresh(ctx); rerr == nil {
					c.issuer.Store(issuer)
					c.verifier.Store(v)
					return
				} else {
					err = rerr
				}
			} else {
				err = verr
			}
		}
		c.log.Warn("cluster's service-account issuer keys not available yet", "error", err, "retryIn", backoff.String())
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

func (c *Cluster) fetchIssuer(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	raw, err := c.readCapped(ctx, "/.well-known/openid-configuration")
	if err != nil {
		return "", fmt.Errorf("reading the OpenID discovery document: %w", err)
	}
	var doc struct {
		Issuer string `json:"issuer"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil || doc.Issuer == "" {
		return "", fmt.Errorf("OpenID discovery document has no issuer (%v)", err)
	}
	return doc.Issuer, nil
}

func (c *Cluster) fetchJWKS(ctx context.Context) ([]byte, error) {
	return c.readCapped(ctx, "/openid/v1/jwks")
}

// MaxDocumentBytes caps the discovery document and key set read from a
// cluster.
const MaxDocumentBytes = 1 << 20

func (c *Cluster) readCapped(ctx context.Context, path string) ([]byte, error) {
	rc, err := c.json.CoreV1().RESTClient().Get().AbsPath(path).Stream(ctx)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return readLimited(rc, MaxDocumentBytes, path)
}

func readLimited(r io.Reader, limit int64, what string) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than the %d byte limit", what, limit)
	}
	return b, nil
}

// Stop ends the watches and key refreshes.
func (c *Cluster) Stop() {
	c.Start() // so cancel exists and done closes
	c.cancel()
	<-c.done
	c.state.Store(Stopped)
}

// State is the cluster's sync state.
func (c *Cluster) State() State { return c.state.Load().(State) }

// Synced reports whether local verification and the object caches are
// ready and current: synced, and the API server answered within
// StaleAfter.
// Any list/watch error makes it false at once until that list or watch
// succeeds again.
func (c *Cluster) Synced() bool {
	return c.State() == Synced && c.failing[kindPods].Load() == nil && c.failing[kindServiceAccounts].Load() == nil &&
		c.overCapacity.Load() == nil &&
		time.Since(time.Unix(0, c.lastContact.Load())) < c.opts.StaleAfter
}

// Staleness is how long the view has not been known current (0 when it
// is) and why: a failing list/watch or probe.
func (c *Cluster) Staleness() (time.Duration, string) {
	var d time.Duration
	reason := ""
	if f := c.overCapacity.Load(); f != nil {
		d, reason = time.Since(f.since), f.err
	}
	for k := range c.failing {
		if f := c.failing[k].Load(); f != nil {
			if s := time.Since(f.since); s > d {
				d, reason = s, kindNames[k]+" list/watch: "+f.err
			}
		}
	}
	if s := time.Since(time.Unix(0, c.lastContact.Load())); s > 2*time.Second && s > d {
		d, reason = s, c.staleReason.Load().(string)
	}
	return d, reason
}

// WaitSynced waits until the cluster synced or ctx ends.
func (c *Cluster) WaitSynced(ctx context.Context) bool {
	select {
	case <-c.synced:
		return true
	case <-ctx.Done():
		return false
	}
}

// Issuer is the cluster's service-account issuer, once discovered.
func (c *Cluster) Issuer() string { return c.issuer.Load().(string) }

// ErrNotReady means the cluster cannot verify locally yet.
var ErrNotReady = errors.New("cluster not synced yet")

// VerifyToken verifies a service-account token locally against the
// cluster's issuer keys.
func (c *Cluster) VerifyToken(ctx context.Context, token string) (*jwks.Claims, error) {
	v := c.verifier.Load()
	if v == nil {
		return nil, ErrNotReady
	}
	return v.VerifyToken(ctx, token)
}

// Review asks the cluster's API server about a token (TokenReview).
func (c *Cluster) Review(ctx context.Context, token string, audiences []string) (*authenticationv1.TokenReviewStatus, error) {
	tr, err := c.review.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	return &tr.Status, nil
}

// ServiceAccountUID returns the UID of a live service account.
func (c *Cluster) ServiceAccountUID(namespace, name string) (string, bool) {
	sa, ok := c.ServiceAccount(namespace, name)
	return sa.UID, ok
}

// ServiceAccount returns a live service account (not being deleted) from
// the cache.
func (c *Cluster) ServiceAccount(namespace, name string) (ServiceAccount, bool) {
	obj, ok, err := c.saInformer.GetStore().GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return ServiceAccount{}, false
	}
	o, ok := obj.(*objectEntry)
	if !ok || o.deleting {
		return ServiceAccount{}, false
	}
	return ServiceAccount{Namespace: o.namespace, Name: o.name, UID: o.uid, Created: time.Unix(o.created, 0)}, true
}

// PodsOf returns the cached pods that run as namespace/serviceAccount, in
// any state.
func (c *Cluster) PodsOf(namespace, serviceAccount string) []Pod {
	objs, err := c.podInformer.GetIndexer().ByIndex(indexServiceAccount, namespace+"/"+serviceAccount)
	if err != nil {
		return nil
	}
	out := make([]Pod, 0, len(objs))
	for _, obj := range objs {
		if p, ok := obj.(*podEntry); ok {
			out = append(out, p.pod())
		}
	}
	return out
}

// Pod returns a live pod.
func (c *Cluster) Pod(namespace, name string) (Pod, bool) {
	obj, ok, err := c.podInformer.GetStore().GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return Pod{}, false
	}
	p, ok := obj.(*podEntry)
	if !ok {
		return Pod{}, false
	}
	return p.pod(), true
}

// RunsOn reports whether a pod of namespace/serviceAccount that has not
// terminated and is not being deleted runs on node.
func (c *Cluster) RunsOn(node, namespace, serviceAccount string) bool {
	objs, err := c.podInformer.GetIndexer().ByIndex(indexNodeServiceAccount, node+"/"+namespace+"/"+serviceAccount)
	if err != nil {
		return false
	}
	for _, obj := range objs {
		if p, ok := obj.(*podEntry); ok && !p.terminated && !p.deleting {
			return true
		}
	}
	return false
}

func (p *podEntry) pod() Pod {
	pod := Pod{Name: p.name, Namespace: p.namespace, UID: p.uid, ServiceAccount: p.serviceAccount, Node: p.node,
		Terminated: p.terminated, Deleting: p.deleting, Created: time.Unix(p.created, 0)}
	if p.deletion != 0 {
		pod.DeletionTimestamp = time.Unix(p.deletion, 0)
	}
	return pod
}

// MaxObjects is the cap on cached pods plus service accounts.
func (c *Cluster) MaxObjects() int { return c.opts.MaxObjects }

// Counts is the number of cached pods and service accounts.
func (c *Cluster) Counts() (pods, serviceAccounts int) {
	return len(c.podInformer.GetStore().ListKeys()), len(c.saInformer.GetStore().ListKeys())
}
