package publish

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/meshca/broker/cluster"
)

const (
	// writeTimeout bounds one API write.
	writeTimeout = 30 * time.Second
	// summaryEvery: writes are summed up in one info log per cluster at
	// most this often (each write is logged at debug).
	summaryEvery = 5 * time.Second
	// errorLogEvery: failed writes of one cluster are logged at most this
	// often (with the number left unlogged).
	errorLogEvery = 10 * time.Second
	// discoveryRetryMax caps the pause between ClusterTrustBundle
	// discovery attempts while the API server does not answer.
	discoveryRetryMax = 5 * time.Minute
)

type kind uint8

const (
	kindConfigMap kind = iota
	kindCTB
)

func (k kind) label() string {
	if k == kindCTB {
		return kindCTBLabel
	}
	return kindConfigMapLabel
}

// key is one object to keep: a namespace's ConfigMap (name = the
// namespace) or the ClusterTrustBundle.
type key struct {
	kind kind
	name string
}

// worker publishes to one cluster: its informers, its queue, and the
// write history of each object it keeps.
type worker struct {
	p     *Publisher
	id    string
	c     *cluster.Cluster
	log   *slog.Logger
	queue workqueue.TypedRateLimitingInterface[key]
	nsInf cache.SharedIndexInformer
	cmInf cache.SharedIndexInformer

	mu         sync.Mutex
	objs       map[key]*guard
	ctb        *ctbAPI
	ctbServed  bool
	ctbRefused bool
	// since the last summary log
	created, updated int
	lastSummary      time.Time
	writes           int
	conflicts        int
	errSuppressed    int
	lastErrLog       time.Time

	cancel context.CancelFunc
	done   chan struct{}
}

func newWorker(p *Publisher, c *cluster.Cluster) (*worker, error) {
	if c == nil || c.Client == nil {
		return nil, fmt.Errorf("cluster without a client")
	}
	w := &worker{
		p:    p,
		id:   c.ID,
		c:    c,
		log:  p.log.With("cluster", c.ID),
		objs: map[key]*guard{},
		done: make(chan struct{}),
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedMaxOfRateLimiter(
			workqueue.NewTypedItemExponentialFailureRateLimiter[key](5*time.Millisecond, p.cfg.BackoffMax),
			&workqueue.TypedBucketRateLimiter[key]{Limiter: rate.NewLimiter(rate.Limit(10), 100)},
		)),
	}
	nsTweak := func(o *metav1.ListOptions) {
		if p.sel != nil {
			o.LabelSelector = p.sel.String()
		}
	}
	w.nsInf = coreinformers.NewFilteredNamespaceInformer(c.Client, p.cfg.Resync, cache.Indexers{}, nsTweak)
	w.cmInf = coreinformers.NewFilteredConfigMapInformer(c.Client, metav1.NamespaceAll, p.cfg.Resync, cache.Indexers{},
		func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + ConfigMapName })
	if _, err := w.nsInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.enqueueNamespace(obj) },
		UpdateFunc: func(_, obj any) { w.enqueueNamespace(obj) },
		DeleteFunc: func(obj any) { w.enqueueNamespace(obj) },
	}); err != nil {
		return nil, err
	}
	if _, err := w.cmInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.configMapEvent(obj) },
		UpdateFunc: func(_, obj any) { w.configMapEvent(obj) },
		DeleteFunc: func(obj any) { w.configMapEvent(obj) },
	}); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *worker) enqueueNamespace(obj any) {
	if name, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
		w.queue.Add(key{kindConfigMap, name})
	}
}

func (w *worker) configMapEvent(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	cm, ok := obj.(*corev1.ConfigMap)
	if !ok || cm.Name != ConfigMapName {
		return
	}
	w.observed(key{kindConfigMap, cm.Namespace}, cm.ResourceVersion)
	w.queue.Add(key{kindConfigMap, cm.Namespace})
}

func (w *worker) observed(k key, rv string) {
	w.mu.Lock()
	if g := w.objs[k]; g != nil {
		g.observed(rv)
	}
	w.mu.Unlock()
}

// enqueueAll has every object compared again (the bundle changed).
func (w *worker) enqueueAll() {
	for _, name := range w.nsInf.GetStore().ListKeys() {
		w.queue.Add(key{kindConfigMap, name})
	}
	if n := w.p.cfg.ClusterTrustBundleName; n != "" {
		w.queue.Add(key{kindCTB, n})
	}
}

func (w *worker) start(parent context.Context) {
	ctx, cancel := context.WithCancel(parent)
	w.cancel = cancel
	go func() {
		defer close(w.done)
		w.run(ctx)
	}()
}

func (w *worker) stop() {
	if w.cancel != nil {
		w.cancel()
		<-w.done
	}
}

func (w *worker) run(ctx context.Context) {
	var wg sync.WaitGroup
	defer func() {
		w.queue.ShutDown()
		wg.Wait()
	}()
	wg.Add(2)
	go func() { defer wg.Done(); w.nsInf.Run(ctx.Done()) }()
	go func() { defer wg.Done(); w.cmInf.Run(ctx.Done()) }()
	if w.p.cfg.ClusterTrustBundleName != "" {
		wg.Add(1)
		go func() { defer wg.Done(); w.runCTB(ctx) }()
	}
	start := time.Now()
	if !cache.WaitForCacheSync(ctx.Done(), w.nsInf.HasSynced, w.cmInf.HasSynced) {
		return
	}
	w.log.Info("publisher caches synced", "after", time.Since(start).Round(time.Millisecond).String(),
		"namespaces", len(w.nsInf.GetStore().ListKeys()), "configMaps", len(w.cmInf.GetStore().ListKeys()))
	for range w.p.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for w.processNext(ctx) {
			}
		}()
	}
	t := time.NewTicker(summaryEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			w.summarize(true)
			return
		case <-t.C:
			w.summarize(false)
		}
	}
}

func (w *worker) processNext(ctx context.Context) bool {
	k, quit := w.queue.Get()
	if quit {
		return false
	}
	defer w.queue.Done(k)
	after, err := w.sync(ctx, k)
	switch {
	case ctx.Err() != nil:
	case err != nil:
		w.queue.AddRateLimited(k)
	case after > 0:
		w.queue.Forget(k)
		w.queue.AddAfter(k, after)
	default:
		w.queue.Forget(k)
	}
	return true
}

// sync compares one object with the bundle and writes it if needed. It
// returns after > 0 to look again later (backoff, or waiting for the cache
// to show a write), or an error to retry with the queue's backoff.
func (w *worker) sync(ctx context.Context, k key) (time.Duration, error) {
	snap := w.p.cfg.Bundle.Current()
	if snap == nil || len(snap.PEM) == 0 {
		return 0, nil // nothing to publish yet; the first load enqueues all
	}
	switch k.kind {
	case kindCTB:
		return w.syncCTB(ctx, k, snap.PEM, snap.Generation)
	default:
		return w.syncConfigMap(ctx, k, snap.PEM, snap.Generation)
	}
}

func (w *worker) syncConfigMap(ctx context.Context, k key, bundle []byte, gen uint64) (time.Duration, error) {
	var ns *corev1.Namespace
	if o, ok, _ := w.nsInf.GetStore().GetByKey(k.name); ok {
		ns, _ = o.(*corev1.Namespace)
	}
	var cm *corev1.ConfigMap
	if o, ok, _ := w.cmInf.GetStore().GetByKey(k.name + "/" + ConfigMapName); ok {
		cm, _ = o.(*corev1.ConfigMap)
	}
	act, obj := decideConfigMap(ns, w.p.sel, cm, bundle)
	var managed []metav1.ManagedFieldsEntry
	if cm != nil {
		managed = cm.ManagedFields
	}
	return w.reconcile(ctx, k, act, bundle, gen, managed, func(ctx context.Context, opts metav1.CreateOptions, uopts metav1.UpdateOptions) (string, error) {
		cms := w.c.Client.CoreV1().ConfigMaps(k.name)
		var out *corev1.ConfigMap
		var err error
		if act == create {
			out, err = cms.Create(ctx, obj, opts)
		} else {
			out, err = cms.Update(ctx, obj, uopts)
		}
		if err != nil {
			return "", err
		}
		return out.ResourceVersion, nil
	})
}

// writeFunc performs one create or update and returns the new
// resourceVersion.
type writeFunc func(ctx context.Context, c metav1.CreateOptions, u metav1.UpdateOptions) (string, error)

// reconcile is the part of a sync common to every kind: in scope or not,
// in sync or not, the competing-writer guard, the write, the bookkeeping.
func (w *worker) reconcile(ctx context.Context, k key, act action, bundle []byte, gen uint64, managed []metav1.ManagedFieldsEntry, write writeFunc) (time.Duration, error) {
	now := time.Now()
	w.mu.Lock()
	switch act {
	case skip:
		delete(w.objs, k)
		w.mu.Unlock()
		return 0, nil
	case leave, refuse:
		g := w.guardFor(k)
		g.gen = 0
		if act == leave {
			// In sync: nothing is held back (a competing writer's next
			// change is still judged against the streak so far).
			g.gen, g.notBefore = gen, time.Time{}
		}
		w.mu.Unlock()
		return 0, nil
	}
	g := w.guardFor(k)
	g.gen = 0
	desired := sum(bundle)
	v := g.admit(now, desired, w.p.policy)
	writes := g.writes
	if v.conflict {
		w.conflicts++
	}
	w.mu.Unlock()

	if v.conflict {
		w.p.m.conflicts.WithLabelValues(w.id, k.kind.label()).Inc()
		writer := lastWriter(managed, w.p.cfg.FieldManager, fieldOf(k.kind))
		if writer == "" {
			writer = "unknown"
		}
		attrs := []any{"kind", k.kind.label(), "lastWriter", writer, "changedAgain", v.streak - 1, "retryIn", v.delay.String(), "writesToIt", writes}
		if k.kind == kindConfigMap {
			attrs = append(attrs, "namespace", k.name, "hint", "another writer keeps changing root-cert.pem; if it is istiod, its CA is still on (ENABLE_CA_SERVER=false turns it off)")
		} else {
			attrs = append(attrs, "name", k.name)
		}
		w.log.Warn("competing writer: the published trust bundle was changed again by someone else; backing off", attrs...)
	}
	if v.wait > 0 {
		return v.wait, nil
	}

	wctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	fm := w.p.cfg.FieldManager
	rv, err := write(wctx, metav1.CreateOptions{FieldManager: fm}, metav1.UpdateOptions{FieldManager: fm})
	result := resultCreated
	if act == update {
		result = resultUpdated
	}
	if err != nil {
		result = resultError
		if isStale(err) {
			result = resultStale
		}
	}
	w.p.m.writes.WithLabelValues(w.id, k.kind.label(), result).Inc()
	switch {
	case err == nil:
		w.mu.Lock()
		g.wrote(time.Now(), desired, rv)
		w.writes++
		if act == create {
			w.created++
		} else {
			w.updated++
		}
		w.mu.Unlock()
		w.log.Debug("trust bundle written", "kind", k.kind.label(), "object", k.name, "op", act.String(), "generation", gen, "resourceVersion", rv)
		return 0, nil
	case result == resultStale:
		// The cache was behind: look again once it has caught up.
		w.log.Debug("trust bundle write refused; the cache was behind", "kind", k.kind.label(), "object", k.name, "error", err)
		return 0, err
	default:
		w.logError("writing the trust bundle failed; retrying with backoff", "kind", k.kind.label(), "object", k.name, "op", act.String(), "error", err)
		return 0, err
	}
}

func fieldOf(k kind) string {
	if k == kindCTB {
		return "trustBundle"
	}
	return DataKey
}

// isStale: the write was refused because the object or namespace changed
// since the cache last saw it.
func isStale(err error) bool {
	return apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) || apierrors.IsNotFound(err) ||
		apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause)
}

func (w *worker) guardFor(k key) *guard {
	g := w.objs[k]
	if g == nil {
		g = &guard{}
		w.objs[k] = g
	}
	return g
}

// logError logs at most one failed write per errorLogEvery.
func (w *worker) logError(msg string, attrs ...any) {
	w.mu.Lock()
	now := time.Now()
	if now.Sub(w.lastErrLog) < errorLogEvery {
		w.errSuppressed++
		w.mu.Unlock()
		return
	}
	suppressed := w.errSuppressed
	w.lastErrLog, w.errSuppressed = now, 0
	w.mu.Unlock()
	w.log.Warn(msg, append(attrs, "unloggedErrorsBefore", suppressed)...)
}

// summarize logs the writes made since the last summary (when the queue
// is idle, or at least every minute, or when final).
func (w *worker) summarize(final bool) {
	w.mu.Lock()
	created, updated := w.created, w.updated
	due := final || (created+updated > 0 && (w.queue.Len() == 0 || time.Since(w.lastSummary) > time.Minute))
	if !due || (!final && created+updated == 0) {
		w.mu.Unlock()
		return
	}
	w.created, w.updated, w.lastSummary = 0, 0, time.Now()
	total, conflicts := w.writes, w.conflicts
	w.mu.Unlock()
	var gen uint64
	if s := w.p.cfg.Bundle.Current(); s != nil {
		gen = s.Generation
	}
	st := w.status(gen)
	msg := "trust bundle published"
	if final {
		msg = "stopped publishing to cluster"
	}
	w.log.Info(msg, "generation", gen, "created", created, "updated", updated, "namespaces", st.Namespaces, "inSync", st.InSync,
		"backingOff", st.BackingOff, "writesTotal", total, "conflictsTotal", conflicts)
}

// status sums up the worker's objects against bundle generation gen.
func (w *worker) status(gen uint64) ClusterStatus {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	st := ClusterStatus{Cluster: w.id, CTBServed: w.ctbServed, Writes: w.writes, Conflicts: w.conflicts}
	if w.ctb != nil {
		st.CTBVersion = w.ctb.version
	}
	var minGen uint64
	first := true
	for k, g := range w.objs {
		if g.backingOff(now) {
			st.BackingOff++
		}
		if k.kind == kindCTB {
			if g.gen == gen {
				st.CTBGeneration = gen
			}
			continue
		}
		st.Namespaces++
		if g.gen == gen && gen != 0 {
			st.InSync++
		}
		if first || g.gen < minGen {
			minGen, first = g.gen, false
		}
	}
	st.ConfigMapGeneration = minGen
	return st
}

// runCTB finds out whether the cluster serves ClusterTrustBundle, and if it
// does, watches the configured one and has it kept.
func (w *worker) runCTB(ctx context.Context) {
	name := w.p.cfg.ClusterTrustBundleName
	delay := time.Second
	var version string
	for {
		v, err := servedCTBVersion(ctx, w.c.Client)
		if err == nil {
			version = v
			break
		}
		if ctx.Err() != nil {
			return
		}
		w.log.Warn("ClusterTrustBundle discovery failed; trying again", "error", err, "in", delay.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, discoveryRetryMax)
	}
	if version == "" {
		w.log.Info("the cluster does not serve ClusterTrustBundle (certificates.k8s.io v1beta1 or v1alpha1); publishing the ConfigMaps only", "clusterTrustBundle", name)
		return
	}
	api, err := newCTBAPI(w.c.Client, version, name, w.p.cfg.Resync)
	if err != nil {
		w.log.Error("ClusterTrustBundle not published", "error", err)
		return
	}
	k := key{kindCTB, name}
	handler := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if v, ok := api.view(obj); ok && v.Name == name {
			w.observed(k, v.ResourceVersion)
			w.queue.Add(k)
		}
	}
	if _, err := api.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: handler, UpdateFunc: func(_, obj any) { handler(obj) }, DeleteFunc: handler,
	}); err != nil {
		w.log.Error("ClusterTrustBundle not published", "error", err)
		return
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() { defer wg.Done(); api.informer.Run(ctx.Done()) }()
	if !cache.WaitForCacheSync(ctx.Done(), api.informer.HasSynced) {
		return
	}
	w.mu.Lock()
	w.ctb, w.ctbServed = api, true
	w.mu.Unlock()
	w.log.Info("publishing the trust bundle as a ClusterTrustBundle", "name", name, "signerName", w.p.cfg.ClusterTrustBundleSigner, "version", "certificates.k8s.io/"+version)
	w.queue.Add(k)
	<-ctx.Done()
}

func (w *worker) syncCTB(ctx context.Context, k key, bundle []byte, gen uint64) (time.Duration, error) {
	w.mu.Lock()
	api := w.ctb
	w.mu.Unlock()
	if api == nil {
		return 0, nil // not served, or not discovered yet (then enqueued)
	}
	var cur *ctbView
	obj, exists, _ := api.informer.GetStore().GetByKey(k.name)
	if exists {
		cur, _ = api.view(obj)
	}
	signer := w.p.cfg.ClusterTrustBundleSigner
	act := decideCTB(cur, signer, bundle)
	if act == refuse {
		w.mu.Lock()
		logged := w.ctbRefused
		w.ctbRefused = true
		w.mu.Unlock()
		if !logged {
			w.log.Error("ClusterTrustBundle exists with another signer name, which cannot be changed; leaving it alone (delete it, or configure its signer)",
				"name", k.name, "signerName", cur.SignerName, "configured", signer)
		}
	}
	var managed []metav1.ManagedFieldsEntry
	if cur != nil {
		managed = cur.ManagedFields
	}
	return w.reconcile(ctx, k, act, bundle, gen, managed, func(ctx context.Context, c metav1.CreateOptions, u metav1.UpdateOptions) (string, error) {
		if act == create {
			return api.create(ctx, k.name, signer, string(bundle), c)
		}
		return api.update(ctx, obj, string(bundle), u)
	})
}
