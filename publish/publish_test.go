package publish

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	certv1beta1 "k8s.io/api/certificates/v1beta1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshca/broker/cluster"
	"github.com/meshca/broker/runner"
	"github.com/meshca/broker/trust"
)

// fakeClusters is a settable cluster set.
type fakeClusters struct {
	mu    sync.Mutex
	list  []*cluster.Cluster
	hooks []func()
}

func (f *fakeClusters) All() []*cluster.Cluster {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*cluster.Cluster(nil), f.list...)
}

func (f *fakeClusters) OnChange(h func()) {
	f.mu.Lock()
	f.hooks = append(f.hooks, h)
	f.mu.Unlock()
}

func (f *fakeClusters) set(cs ...*cluster.Cluster) {
	f.mu.Lock()
	f.list = cs
	hooks := append([]func(){}, f.hooks...)
	f.mu.Unlock()
	for _, h := range hooks {
		h()
	}
}

// fakeBundle is a settable bundle.
type fakeBundle struct {
	mu   sync.Mutex
	cur  *trust.Snapshot
	subs []chan struct{}
}

func newFakeBundle() *fakeBundle { return &fakeBundle{} }

func (b *fakeBundle) Current() *trust.Snapshot {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cur
}

func (b *fakeBundle) Subscribe() <-chan struct{} {
	ch := make(chan struct{}, 1)
	b.mu.Lock()
	b.subs = append(b.subs, ch)
	b.mu.Unlock()
	return ch
}

func (b *fakeBundle) set(pem string) {
	b.mu.Lock()
	gen := uint64(1)
	if b.cur != nil {
		gen = b.cur.Generation + 1
	}
	b.cur = &trust.Snapshot{PEM: []byte(pem), Generation: gen}
	for _, s := range b.subs {
		select {
		case s <- struct{}{}:
		default:
		}
	}
	b.mu.Unlock()
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

func waitFor(t testing.TB, what string, limit time.Duration, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		err := cond()
		if err == nil {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("%s: not within %s: %v", what, limit, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func rootCertIn(c kubernetes.Interface, namespace string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cm, err := c.CoreV1().ConfigMaps(namespace).Get(ctx, ConfigMapName, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return cm.Data, nil
}

// hasBundle: namespace's ConfigMap holds want.
func hasBundle(c kubernetes.Interface, namespace, want string) func() error {
	return func() error {
		d, err := rootCertIn(c, namespace)
		if err != nil {
			return err
		}
		if d[DataKey] != want {
			return errors.New("root-cert.pem differs")
		}
		return nil
	}
}

// counter sums the series of a counter whose labels include match.
func counter(t testing.TB, g prometheus.Gatherer, name string, match map[string]string) float64 {
	t.Helper()
	return sumMetric(t, g, name, match, func(m *dto.Metric) float64 { return m.GetCounter().GetValue() })
}

func gauge(t testing.TB, g prometheus.Gatherer, name string, match map[string]string) float64 {
	t.Helper()
	return sumMetric(t, g, name, match, func(m *dto.Metric) float64 { return m.GetGauge().GetValue() })
}

func sumMetric(t testing.TB, g prometheus.Gatherer, name string, match map[string]string, val func(*dto.Metric) float64) float64 {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var total float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for k, v := range match {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == k && l.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			total += val(m)
		}
	}
	return total
}

func namespaceObj(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}, Status: corev1.NamespaceStatus{Phase: corev1.NamespaceActive}}
}

func startPublisher(t *testing.T, cfg Config) (*Publisher, func()) {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop := func() { once.Do(func() { stopRun(t, cancel, done) }) }
	t.Cleanup(stop)
	return p, stop
}

func stopRun(t *testing.T, cancel context.CancelFunc, done chan error) {
	{
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v, want nil when its context ends", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return within 10s of its context ending")
		}
	}
}

// TestPublishWithFakeClusters runs the whole publisher against two fake
// clientsets: the fast version of the integration test.
func TestPublishWithFakeClusters(t *testing.T) {
	terminatingNS := namespaceObj("going", nil)
	terminatingNS.Status.Phase = corev1.NamespaceTerminating
	existing := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: "b", Labels: map[string]string{"owner": "someone"}},
		Data:       map[string]string{DataKey: "old root", "extra.pem": "keep me"},
	}
	c1 := fake.NewClientset(namespaceObj("a", nil), namespaceObj("b", nil), terminatingNS, existing,
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "unrelated", Namespace: "a"}, Data: map[string]string{DataKey: "not ours"}})
	c2 := fake.NewClientset(namespaceObj("a", nil), namespaceObj("x", nil))
	clusters := &fakeClusters{list: []*cluster.Cluster{{ID: "one", Client: c1}, {ID: "two", Client: c2}}}
	bundle := newFakeBundle()
	bundle.set("bundle-1")
	reg := prometheus.NewRegistry()
	p, stop := startPublisher(t, Config{Clusters: clusters, Bundle: bundle, Registerer: reg, Log: testLog(t), BackoffBase: 20 * time.Millisecond})

	for _, c := range []struct {
		client kubernetes.Interface
		ns     string
	}{{c1, "a"}, {c1, "b"}, {c2, "a"}, {c2, "x"}} {
		waitFor(t, "ConfigMap in "+c.ns, 5*time.Second, hasBundle(c.client, c.ns, "bundle-1"))
	}
	d, _ := rootCertIn(c1, "b")
	if d["extra.pem"] != "keep me" {
		t.Errorf("repair lost another key: %v", d)
	}
	if _, err := rootCertIn(c1, "going"); !apierrors.IsNotFound(err) {
		t.Errorf("terminating namespace: %v, want no ConfigMap", err)
	}
	cm, _ := c1.CoreV1().ConfigMaps("a").Get(context.Background(), "unrelated", metav1.GetOptions{})
	if cm.Data[DataKey] != "not ours" {
		t.Error("another ConfigMap was touched")
	}

	t.Run("new namespace", func(t *testing.T) {
		if _, err := c2.CoreV1().Namespaces().Create(context.Background(), namespaceObj("new", nil), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "ConfigMap in a new namespace", 5*time.Second, hasBundle(c2, "new", "bundle-1"))
	})
	t.Run("hand edit repaired, other keys kept", func(t *testing.T) {
		cm, _ := c1.CoreV1().ConfigMaps("a").Get(context.Background(), ConfigMapName, metav1.GetOptions{})
		cm.Data[DataKey] = "edited"
		cm.Data["mine"] = "x"
		if _, err := c1.CoreV1().ConfigMaps("a").Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "repair", 5*time.Second, hasBundle(c1, "a", "bundle-1"))
		if d, _ := rootCertIn(c1, "a"); d["mine"] != "x" {
			t.Errorf("repair lost another key: %v", d)
		}
	})
	t.Run("deleted ConfigMap recreated", func(t *testing.T) {
		if err := c2.CoreV1().ConfigMaps("x").Delete(context.Background(), ConfigMapName, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "recreation", 5*time.Second, hasBundle(c2, "x", "bundle-1"))
	})
	t.Run("bundle change reaches all", func(t *testing.T) {
		bundle.set("bundle-2")
		for _, c := range []struct {
			client kubernetes.Interface
			ns     string
		}{{c1, "a"}, {c1, "b"}, {c2, "a"}, {c2, "x"}, {c2, "new"}} {
			waitFor(t, "bundle-2 in "+c.ns, 5*time.Second, hasBundle(c.client, c.ns, "bundle-2"))
		}
		waitFor(t, "status in sync", 5*time.Second, func() error {
			for _, s := range p.Status() {
				if s.InSync != s.Namespaces || s.ConfigMapGeneration != 2 {
					return errors.New("not in sync")
				}
			}
			return nil
		})
		if got := gauge(t, reg, "meshca_trust_publish_namespaces_in_sync", map[string]string{"cluster": "two"}); got != 3 {
			t.Errorf("namespaces in sync in cluster two: %v, want 3", got)
		}
		if got := gauge(t, reg, "meshca_trust_publish_generation", map[string]string{"cluster": "one", "kind": "configmap"}); got != 2 {
			t.Errorf("published generation in cluster one: %v, want 2", got)
		}
	})
	t.Run("competing writer is not fought in a loop", func(t *testing.T) {
		before := counter(t, reg, "meshca_trust_publish_writes_total", map[string]string{"cluster": "one", "result": "updated"})
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		// Reverts every write of the publisher at once, for a second.
		rewrites := 0
		for ctx.Err() == nil {
			cm, err := c1.CoreV1().ConfigMaps("b").Get(ctx, ConfigMapName, metav1.GetOptions{})
			if err == nil && cm.Data[DataKey] != "rival" {
				cm.Data[DataKey] = "rival"
				if _, err := c1.CoreV1().ConfigMaps("b").Update(ctx, cm, metav1.UpdateOptions{}); err == nil {
					rewrites++
				}
			}
			time.Sleep(time.Millisecond)
		}
		writes := counter(t, reg, "meshca_trust_publish_writes_total", map[string]string{"cluster": "one", "result": "updated"}) - before
		// 1s at a 20ms base: writes at about 0, 0, 20, 60, 140, 300,
		// 620ms: 7, plus scheduling slack.
		if writes > 9 {
			t.Errorf("%v writes in 1s against a competing writer, want at most 9", writes)
		}
		if c := counter(t, reg, "meshca_trust_publish_conflicts_total", map[string]string{"cluster": "one"}); c < 1 {
			t.Error("no conflict counted")
		}
		t.Logf("competing writer: %d rewrites, the publisher made %v writes", rewrites, writes)
		waitFor(t, "repair after the writer stopped", 5*time.Second, hasBundle(c1, "b", "bundle-2"))
	})
	t.Run("replaced cluster: the new client is used", func(t *testing.T) {
		c1b := fake.NewClientset(namespaceObj("a", nil))
		clusters.set(&cluster.Cluster{ID: "one", Client: c1b}, clusters.All()[1])
		waitFor(t, "ConfigMap through the new client", 5*time.Second, hasBundle(c1b, "a", "bundle-2"))
	})
	t.Run("removed cluster: no more writes", func(t *testing.T) {
		clusters.set(clusters.All()[0])
		waitFor(t, "worker stopped", 5*time.Second, func() error {
			if len(p.Status()) != 1 {
				return errors.New("still two clusters")
			}
			return nil
		})
		if _, err := c2.CoreV1().Namespaces().Create(context.Background(), namespaceObj("after", nil), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		if _, err := rootCertIn(c2, "after"); !apierrors.IsNotFound(err) {
			t.Errorf("a removed cluster was written to: %v", err)
		}
	})
	stop()
	if s := p.Status(); len(s) != 0 {
		t.Errorf("status after Run returned: %v", s)
	}
}

func TestPublishNamespaceSelector(t *testing.T) {
	c := fake.NewClientset(namespaceObj("in", map[string]string{"mesh": "on"}), namespaceObj("out", nil))
	bundle := newFakeBundle()
	bundle.set("b")
	startPublisher(t, Config{Clusters: &fakeClusters{list: []*cluster.Cluster{{ID: "c", Client: c}}}, Bundle: bundle, NamespaceSelector: "mesh=on", Log: quietLog()})
	waitFor(t, "selected namespace", 5*time.Second, hasBundle(c, "in", "b"))
	time.Sleep(100 * time.Millisecond)
	if _, err := rootCertIn(c, "out"); !apierrors.IsNotFound(err) {
		t.Errorf("namespace not selected: %v", err)
	}
	// Labelling it brings it in.
	ns, _ := c.CoreV1().Namespaces().Get(context.Background(), "out", metav1.GetOptions{})
	ns.Labels = map[string]string{"mesh": "on"}
	if _, err := c.CoreV1().Namespaces().Update(context.Background(), ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "newly selected namespace", 5*time.Second, hasBundle(c, "out", "b"))
}

func TestPublishWaitsForTheBundle(t *testing.T) {
	c := fake.NewClientset(namespaceObj("a", nil))
	bundle := newFakeBundle()
	startPublisher(t, Config{Clusters: &fakeClusters{list: []*cluster.Cluster{{ID: "c", Client: c}}}, Bundle: bundle, Log: quietLog()})
	time.Sleep(100 * time.Millisecond)
	if _, err := rootCertIn(c, "a"); !apierrors.IsNotFound(err) {
		t.Fatalf("published before the bundle was loaded: %v", err)
	}
	bundle.set("first")
	waitFor(t, "first bundle", 5*time.Second, hasBundle(c, "a", "first"))
}

func withCTBDiscovery(c *fake.Clientset, served bool) {
	if served {
		withCTBVersion(c, "v1beta1")
	} else {
		withCTBVersion(c, "")
	}
}

// withCTBVersion makes discovery serve ClusterTrustBundle in version
// ("": not at all; certificates.k8s.io/v1 is served without it).
func withCTBVersion(c *fake.Clientset, version string) {
	d := c.Discovery().(*fakediscovery.FakeDiscovery)
	d.Resources = []*metav1.APIResourceList{
		{GroupVersion: "v1", APIResources: []metav1.APIResource{{Name: "configmaps"}}},
		{GroupVersion: "certificates.k8s.io/v1", APIResources: []metav1.APIResource{{Name: "certificatesigningrequests"}}},
	}
	if version != "" {
		d.Resources = append(d.Resources, &metav1.APIResourceList{GroupVersion: "certificates.k8s.io/" + version, APIResources: []metav1.APIResource{{Name: "clustertrustbundles"}}})
	}
}

func TestPublishClusterTrustBundle(t *testing.T) {
	const name, signer = "meshca.example.com:roots:bundle", "meshca.example.com/roots"
	served := fake.NewClientset(namespaceObj("a", nil))
	withCTBDiscovery(served, true)
	notServed := fake.NewClientset(namespaceObj("a", nil))
	withCTBDiscovery(notServed, false)
	alpha := fake.NewClientset()
	withCTBVersion(alpha, "v1alpha1")
	wrongSigner := fake.NewClientset(&certv1beta1.ClusterTrustBundle{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: certv1beta1.ClusterTrustBundleSpec{SignerName: "other.example.com/x", TrustBundle: "old"}})
	withCTBDiscovery(wrongSigner, true)
	bundle := newFakeBundle()
	bundle.set("b1")
	clusters := &fakeClusters{list: []*cluster.Cluster{{ID: "served", Client: served}, {ID: "not-served", Client: notServed}, {ID: "wrong-signer", Client: wrongSigner}, {ID: "alpha", Client: alpha}}}
	reg := prometheus.NewRegistry()
	p, _ := startPublisher(t, Config{Clusters: clusters, Bundle: bundle, ClusterTrustBundleName: name, ClusterTrustBundleSigner: signer, Registerer: reg, Log: testLog(t)})

	ctb := func(c kubernetes.Interface) func() error {
		return func() error {
			b, err := c.CertificatesV1beta1().ClusterTrustBundles().Get(context.Background(), name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if b.Spec.TrustBundle != string(bundle.Current().PEM) || b.Spec.SignerName != signer {
				return errors.New("differs")
			}
			return nil
		}
	}
	waitFor(t, "ClusterTrustBundle", 5*time.Second, ctb(served))
	waitFor(t, "ClusterTrustBundle through v1alpha1", 5*time.Second, func() error {
		b, err := alpha.CertificatesV1alpha1().ClusterTrustBundles().Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if b.Spec.TrustBundle != "b1" || b.Spec.SignerName != signer {
			return errors.New("differs")
		}
		return nil
	})
	waitFor(t, "ConfigMap where ClusterTrustBundle is not served", 5*time.Second, hasBundle(notServed, "a", "b1"))
	bundle.set("b2")
	waitFor(t, "ClusterTrustBundle updated", 5*time.Second, ctb(served))
	if err := served.CertificatesV1beta1().ClusterTrustBundles().Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "ClusterTrustBundle recreated", 5*time.Second, ctb(served))
	time.Sleep(100 * time.Millisecond)
	b, _ := wrongSigner.CertificatesV1beta1().ClusterTrustBundles().Get(context.Background(), name, metav1.GetOptions{})
	if b.Spec.TrustBundle != "old" {
		t.Error("a ClusterTrustBundle of another signer was written")
	}
	if l, _ := notServed.CertificatesV1beta1().ClusterTrustBundles().List(context.Background(), metav1.ListOptions{}); len(l.Items) != 0 {
		t.Error("ClusterTrustBundle written where not served")
	}
	for _, s := range p.Status() {
		if want := s.Cluster != "not-served"; s.CTBServed != want {
			t.Errorf("%s: CTBServed %v, want %v", s.Cluster, s.CTBServed, want)
		}
	}
	if got := gauge(t, reg, "meshca_trust_publish_generation", map[string]string{"cluster": "served", "kind": "clustertrustbundle"}); got != 2 {
		t.Errorf("ClusterTrustBundle generation %v, want 2", got)
	}
}

// The publisher is a runner part that only the leader runs.
var (
	_ runner.Runnable               = (*Publisher)(nil)
	_ runner.LeaderElectionRunnable = (*Publisher)(nil)
	_ Clusters                      = (*cluster.Registry)(nil)
	_ Bundle                        = (*trust.Bundle)(nil)
)

// TestRunAgainAfterLeadershipLost: Run returns nil when its context ends
// and works again when called again (leadership regained).
func TestRunAgainAfterLeadershipLost(t *testing.T) {
	c := fake.NewClientset(namespaceObj("a", nil))
	bundle := newFakeBundle()
	bundle.set("b1")
	p, err := New(Config{Clusters: &fakeClusters{list: []*cluster.Cluster{{ID: "c", Client: c}}}, Bundle: bundle, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	if !p.NeedLeaderElection() {
		t.Fatal("the publisher must run on the leader only")
	}
	for term := 1; term <= 2; term++ {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		ns := fmt.Sprintf("term-%d", term)
		if _, err := c.CoreV1().Namespaces().Create(context.Background(), namespaceObj(ns, nil), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "ConfigMap in "+ns, 5*time.Second, hasBundle(c, ns, "b1"))
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("term %d: Run returned %v", term, err)
		}
		// Not leading: nothing is written.
		if _, err := c.CoreV1().Namespaces().Create(context.Background(), namespaceObj(ns+"-idle", nil), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		if _, err := rootCertIn(c, ns+"-idle"); !apierrors.IsNotFound(err) {
			t.Fatalf("written while not running: %v", err)
		}
	}
}
