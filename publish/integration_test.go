package publish

// Integration tests: real kube-apiservers (MESHCA_INTEGRATION set; see
// integration/testenv), a real cluster.Registry and a real trust.Bundle.

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	certv1beta1 "k8s.io/api/certificates/v1beta1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/meshca/broker/cluster"
	"github.com/meshca/broker/integration/testenv"
	"github.com/meshca/broker/trust"
)

const (
	testSigner = "meshca.example.com/roots"
	testCTB    = "meshca.example.com:roots:mesh"
	// rivalManager is the competing writer's field manager.
	rivalManager = "rival-writer"
)

// publisherRules is the RBAC the publisher needs in every cluster (the
// ClusterTrustBundle rules only where one is configured). The tests run
// the publisher with exactly these.
func publisherRules(ctbName, signer string) []rbacv1.PolicyRule {
	rules := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{ConfigMapName}, Verbs: []string{"list", "watch", "update"}},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"create"}},
	}
	if ctbName != "" {
		rules = append(rules,
			rbacv1.PolicyRule{APIGroups: []string{"certificates.k8s.io"}, Resources: []string{"clustertrustbundles"}, ResourceNames: []string{ctbName}, Verbs: []string{"list", "watch", "update"}},
			rbacv1.PolicyRule{APIGroups: []string{"certificates.k8s.io"}, Resources: []string{"clustertrustbundles"}, Verbs: []string{"create"}},
		)
		if signer != "" {
			rules = append(rules, rbacv1.PolicyRule{APIGroups: []string{"certificates.k8s.io"}, Resources: []string{"signers"}, ResourceNames: []string{signer}, Verbs: []string{"attest"}})
		}
	}
	return rules
}

// readerRules: what the registry's view of a cluster needs
// (deploy/remote-reader.yaml), so the local cluster can run as a limited
// identity too.
var readerRules = []rbacv1.PolicyRule{
	{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
	{APIGroups: []string{""}, Resources: []string{"pods", "serviceaccounts"}, Verbs: []string{"get", "list", "watch"}},
	{NonResourceURLs: []string{"/.well-known/openid-configuration", "/openid/v1/jwks"}, Verbs: []string{"get"}},
}

// limitedIdentity creates service account istio-system/<name> bound to
// rules and returns a token for it.
func limitedIdentity(t *testing.T, k *testenv.Kube, name string, rules ...[]rbacv1.PolicyRule) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	k.CreateNamespace(t, "istio-system")
	k.CreateServiceAccount(t, "istio-system", name)
	for i, r := range rules {
		role := fmt.Sprintf("%s-%d", name, i)
		if _, err := k.Client.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: role}, Rules: r}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := k.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: role},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "istio-system", Name: name}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	tok, err := k.Token(ctx, "istio-system", name, []string{k.Issuer}, time.Hour, "")
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// settableRoots is a trust.Source the test changes.
type settableRoots struct {
	v atomic.Pointer[[]*x509.Certificate]
}

func (s *settableRoots) set(certs ...*x509.Certificate) { s.v.Store(&certs) }
func (s *settableRoots) source(context.Context) ([]*x509.Certificate, error) {
	return *s.v.Load(), nil
}

// logRecorder keeps every log line (and shows them in the test log).
type logRecorder struct {
	mu  sync.Mutex
	buf bytes.Buffer
	t   testing.TB
	on  atomic.Bool
}

func (l *logRecorder) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.buf.Write(p)
	l.mu.Unlock()
	if l.on.Load() {
		l.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (l *logRecorder) lines(substr ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range strings.Split(l.buf.String(), "\n") {
		ok := line != ""
		for _, s := range substr {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

func newLogRecorder(t testing.TB, level slog.Level) (*logRecorder, *slog.Logger) {
	r := &logRecorder{t: t}
	r.on.Store(true)
	t.Cleanup(func() { r.on.Store(false) })
	return r, slog.New(slog.NewTextHandler(r, &slog.HandlerOptions{Level: level}))
}

func createNamespace(t testing.TB, c kubernetes.Interface, name string, labels map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// resourceVersions of every istio-ca-root-cert in the cluster.
func resourceVersions(t testing.TB, c kubernetes.Interface) map[string]string {
	t.Helper()
	l, err := c.CoreV1().ConfigMaps("").List(context.Background(), metav1.ListOptions{FieldSelector: "metadata.name=" + ConfigMapName})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, cm := range l.Items {
		out[cm.Namespace] = cm.ResourceVersion
	}
	return out
}

func allNamespaces(t testing.TB, c kubernetes.Interface) []string {
	t.Helper()
	l, err := c.CoreV1().Namespaces().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ns := range l.Items {
		if !terminating(&ns) {
			out = append(out, ns.Name)
		}
	}
	return out
}

// everywhere: every active namespace of c holds want.
func everywhere(c kubernetes.Interface, want string) func() error {
	return func() error {
		l, err := c.CoreV1().Namespaces().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, ns := range l.Items {
			if terminating(&ns) {
				continue
			}
			if err := hasBundle(c, ns.Name, want)(); err != nil {
				return fmt.Errorf("namespace %s: %w", ns.Name, err)
			}
		}
		return nil
	}
}

// TestPublishTwoClusters: two real kube-apiservers as two clusters of a
// real registry (cluster2 from a kubeconfig directory), a real trust
// bundle, the publisher running as identities holding exactly
// publisherRules (and the registry's reader rules).
func TestPublishTwoClusters(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	k1 := testenv.StartKube(t, testenv.KubeEtcd(etcd), testenv.KubeName("cluster1"),
		testenv.KubeArgs("--feature-gates=ClusterTrustBundle=true", "--runtime-config=certificates.k8s.io/v1beta1/clustertrustbundles=true"))
	k2 := testenv.StartKube(t, testenv.KubeEtcd(etcd), testenv.KubeName("cluster2"))
	logs, log := newLogRecorder(t, slog.LevelInfo)

	// Namespaces before the publisher starts, and one being deleted (no
	// controller-manager runs, so it stays Terminating).
	for _, k := range []*testenv.Kube{k1, k2} {
		createNamespace(t, k.Client, "app-1", nil)
		createNamespace(t, k.Client, "app-2", nil)
		createNamespace(t, k.Client, "doomed", nil)
		if err := k.Client.CoreV1().Namespaces().Delete(context.Background(), "doomed", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// cluster2 already holds a ConfigMap with an old root and a key of its own.
	if _, err := k2.Client.CoreV1().ConfigMaps("app-2").Create(context.Background(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: "app-2", Labels: map[string]string{"owner": "ops"}, Annotations: map[string]string{"note": "kept"}},
		Data:       map[string]string{DataKey: "an old root", "extra.pem": "kept"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// Limited identities: cluster1 (local) with the ClusterTrustBundle
	// rules, cluster2 with the ConfigMap rules only.
	tok1 := limitedIdentity(t, k1, "meshca-broker", readerRules, publisherRules(testCTB, testSigner))
	tok2 := limitedIdentity(t, k2, "meshca-broker", readerRules, publisherRules("", ""))
	dir := t.TempDir()
	kubeconfig2 := func(tok string) {
		raw, err := os.ReadFile(k2.KubeconfigForToken(t, tok))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, ".tmp"), raw, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, ".tmp"), filepath.Join(dir, "cluster2")); err != nil {
			t.Fatal(err)
		}
	}
	kubeconfig2(tok2)
	reg, err := cluster.NewRegistry(cluster.RegistryConfig{
		LocalID:       "cluster1",
		Local:         k1.RESTConfigForToken(tok1),
		KubeconfigDir: dir,
		// The test API servers listen on 127.0.0.1.
		KubeconfigPolicy: cluster.KubeconfigPolicy{AllowLoopback: true},
		Options:          cluster.Options{Log: log.With("part", "registry"), TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), SyncTimeout: 20 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	runRegistry(t, reg)

	rootA, rootB := testenv.NewCA(t, "root A"), testenv.NewCA(t, "root B")
	roots := &settableRoots{}
	roots.set(rootA.Cert)
	bundle, err := trust.LoadBundle(context.Background(), trust.BundleConfig{Backend: roots.source, Log: log.With("part", "trust")})
	if err != nil {
		t.Fatal(err)
	}
	metrics := prometheus.NewRegistry()
	start := time.Now()
	p, _ := startPublisher(t, Config{
		Clusters: reg, Bundle: bundle, Registerer: metrics, Log: log,
		ClusterTrustBundleName: testCTB, ClusterTrustBundleSigner: testSigner,
	})
	pemA := string(bundle.Current().PEM)

	waitFor(t, "cluster2 in the registry", 30*time.Second, func() error {
		if len(reg.All()) != 2 {
			return errors.New("not yet")
		}
		return nil
	})
	waitFor(t, "every namespace of cluster1", 30*time.Second, everywhere(k1.Client, pemA))
	t.Logf("cluster1: every namespace published %s after start", time.Since(start).Round(time.Millisecond))
	waitFor(t, "every namespace of cluster2", 30*time.Second, everywhere(k2.Client, pemA))
	t.Logf("both clusters: every existing namespace published %s after start", time.Since(start).Round(time.Millisecond))

	t.Run("existing ConfigMap: root-cert.pem repaired, the rest kept", func(t *testing.T) {
		cm, err := k2.Client.CoreV1().ConfigMaps("app-2").Get(context.Background(), ConfigMapName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if cm.Data["extra.pem"] != "kept" || cm.Labels["owner"] != "ops" || cm.Annotations["note"] != "kept" {
			t.Errorf("other content lost: data keys %v labels %v annotations %v", slices.Sorted(maps.Keys(cm.Data)), cm.Labels, cm.Annotations)
		}
	})
	t.Run("terminating namespaces get nothing", func(t *testing.T) {
		for _, k := range []*testenv.Kube{k1, k2} {
			if _, err := rootCertIn(k.Client, "doomed"); !apierrors.IsNotFound(err) {
				t.Errorf("%s: %v, want no ConfigMap in a terminating namespace", k.Name, err)
			}
		}
	})
	t.Run("new namespaces in both clusters", func(t *testing.T) {
		for _, k := range []*testenv.Kube{k1, k2} {
			created := time.Now()
			createNamespace(t, k.Client, "new-"+k.Name, nil)
			took := waitFor(t, "ConfigMap in a new namespace", 10*time.Second, hasBundle(k.Client, "new-"+k.Name, pemA))
			t.Logf("%s: new namespace had its ConfigMap %s after the create call began (%s after it returned)", k.Name, time.Since(created).Round(time.Millisecond), took.Round(time.Millisecond))
		}
	})
	t.Run("hand-edited root-cert.pem repaired, another key kept", func(t *testing.T) {
		cm, err := k2.Client.CoreV1().ConfigMaps("app-1").Get(context.Background(), ConfigMapName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cm.Data[DataKey] = "hand-edited"
		cm.Data["mine.txt"] = "mine"
		if _, err := k2.Client.CoreV1().ConfigMaps("app-1").Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		took := waitFor(t, "repair", 10*time.Second, hasBundle(k2.Client, "app-1", pemA))
		d, _ := rootCertIn(k2.Client, "app-1")
		if d["mine.txt"] != "mine" {
			t.Errorf("repair lost another key: %v", slices.Sorted(maps.Keys(d)))
		}
		t.Logf("repaired within %s", took.Round(time.Millisecond))
	})
	t.Run("deleted ConfigMap recreated", func(t *testing.T) {
		if err := k1.Client.CoreV1().ConfigMaps("app-2").Delete(context.Background(), ConfigMapName, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		took := waitFor(t, "recreation", 10*time.Second, hasBundle(k1.Client, "app-2", pemA))
		t.Logf("recreated within %s", took.Round(time.Millisecond))
	})
	ctbHolds := func(want string) func() error {
		return func() error {
			b, err := k1.Client.CertificatesV1beta1().ClusterTrustBundles().Get(context.Background(), testCTB, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if b.Spec.TrustBundle != want || b.Spec.SignerName != testSigner {
				return errors.New("ClusterTrustBundle differs")
			}
			return nil
		}
	}
	t.Run("ClusterTrustBundle where served, skipped where not", func(t *testing.T) {
		waitFor(t, "ClusterTrustBundle in cluster1", 10*time.Second, ctbHolds(pemA))
		st := p.Status()
		if len(st) != 2 || !st[0].CTBServed || st[0].CTBVersion != "v1beta1" || st[1].CTBServed {
			t.Errorf("status %+v: want cluster1 serving v1beta1, cluster2 not", st)
		}
		if n := len(logs.lines("cluster=cluster2", "does not serve ClusterTrustBundle")); n != 1 {
			t.Errorf("%d info lines about cluster2 not serving ClusterTrustBundle, want 1", n)
		}
	})
	t.Run("RBAC: without attest on the signer a ClusterTrustBundle is refused", func(t *testing.T) {
		var rules []rbacv1.PolicyRule
		for _, r := range publisherRules(testCTB, testSigner) {
			if r.Resources[0] != "signers" {
				rules = append(rules, r)
			}
		}
		c, err := kubernetes.NewForConfig(k1.RESTConfigForToken(limitedIdentity(t, k1, "no-attest", rules)))
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.CertificatesV1beta1().ClusterTrustBundles().Create(context.Background(), &certv1beta1.ClusterTrustBundle{
			ObjectMeta: metav1.ObjectMeta{Name: testSigner[:strings.Index(testSigner, "/")] + ":roots:other"},
			Spec:       certv1beta1.ClusterTrustBundleSpec{SignerName: testSigner, TrustBundle: pemA},
		}, metav1.CreateOptions{})
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "attest") {
			t.Fatalf("creating a ClusterTrustBundle without attest: %v, want Forbidden naming attest", err)
		}
	})
	t.Run("a bundle change reaches every namespace of both clusters", func(t *testing.T) {
		roots.set(rootA.Cert, rootB.Cert)
		changed := time.Now()
		if err := bundle.Load(context.Background()); err != nil {
			t.Fatal(err)
		}
		pemAB := string(bundle.Current().PEM)
		if strings.Count(pemAB, "BEGIN CERTIFICATE") != 2 {
			t.Fatalf("bundle %q", pemAB)
		}
		waitFor(t, "new bundle in cluster1", 20*time.Second, everywhere(k1.Client, pemAB))
		waitFor(t, "new bundle in cluster2", 20*time.Second, everywhere(k2.Client, pemAB))
		waitFor(t, "new bundle in the ClusterTrustBundle", 20*time.Second, ctbHolds(pemAB))
		t.Logf("bundle change published to both clusters (%d and %d namespaces) and the ClusterTrustBundle within %s",
			len(allNamespaces(t, k1.Client)), len(allNamespaces(t, k2.Client)), time.Since(changed).Round(time.Millisecond))
		waitFor(t, "status in sync", 10*time.Second, func() error {
			for _, s := range p.Status() {
				if s.InSync != s.Namespaces || s.ConfigMapGeneration != bundle.Current().Generation {
					return fmt.Errorf("%+v", s)
				}
			}
			return nil
		})
	})
	pem := string(bundle.Current().PEM)

	t.Run("a competing writer causes a bounded number of writes", func(t *testing.T) {
		const fight = 10 * time.Second
		const ns = "app-1"
		ourWrites := func() float64 {
			return counter(t, metrics, "meshca_trust_publish_writes_total", map[string]string{"cluster": "cluster1", "kind": "configmap"})
		}
		before, conflictsBefore := ourWrites(), counter(t, metrics, "meshca_trust_publish_conflicts_total", map[string]string{"cluster": "cluster1"})
		// Count, from the API server's side, the writes that put the bundle back.
		w := liveWatch(t, k1.Client, ns)
		defer w.Stop()
		var repairs atomic.Int64
		go func() {
			for ev := range w.ResultChan() {
				if cm, ok := ev.Object.(*corev1.ConfigMap); ok && ev.Type == watch.Modified && cm.Data[DataKey] == pem {
					repairs.Add(1)
				}
			}
		}()
		// The rival: as istiod with its CA on, it puts its own root back
		// whenever root-cert.pem is not its own, for `fight`.
		ctx, cancel := context.WithTimeout(context.Background(), fight)
		defer cancel()
		rewrites := 0
		cms := k1.Client.CoreV1().ConfigMaps(ns)
		for ctx.Err() == nil {
			cm, err := cms.Get(ctx, ConfigMapName, metav1.GetOptions{})
			if err == nil && cm.Data[DataKey] != "rival root" {
				cm.Data[DataKey] = "rival root"
				if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{FieldManager: rivalManager}); err == nil {
					rewrites++
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
		during := ourWrites() - before
		// After the rival stops, the bundle comes back after the current pause.
		took := waitFor(t, "repair after the rival stopped", 30*time.Second, hasBundle(k1.Client, ns, pem))
		time.Sleep(time.Second) // the watch delivers the last event
		total := ourWrites() - before
		conflicts := counter(t, metrics, "meshca_trust_publish_conflicts_total", map[string]string{"cluster": "cluster1"}) - conflictsBefore
		// Writes at 0, 0, 1, 3, 7 s (then 15 s): 2 + log2(T/1s + 1).
		bound := 2 + int(math.Log2(fight.Seconds()+1))
		t.Logf("competing writer for %s: it rewrote %d times; the publisher wrote %v times during the fight (bound %d), %v in all with the final repair %s after the rival stopped; %v conflicts counted; %d repairs seen by a watch",
			fight, rewrites, during, bound, total, took.Round(time.Millisecond), conflicts, repairs.Load())
		if during > float64(bound)+1 {
			t.Errorf("%v writes during %s of a competing writer, want at most %d (+1 for timing)", during, fight, bound)
		}
		if conflicts < 2 {
			t.Errorf("%v conflicts counted, want the competing writer detected", conflicts)
		}
		if got := repairs.Load(); float64(got) != total {
			t.Errorf("the API server saw %d writes of the bundle, the metric says %v", got, total)
		}
		warns := logs.lines("level=WARN", "competing writer", "cluster=cluster1", "namespace="+ns)
		if len(warns) == 0 || !strings.Contains(warns[0], rivalManager) {
			t.Errorf("want a warning naming the namespace, cluster and last writer %q; got %q", rivalManager, warns)
		} else {
			t.Logf("first warning: %s", warns[0])
		}
	})

	t.Run("zero writes at steady state", func(t *testing.T) {
		const quiet = 20 * time.Second
		waitFor(t, "everything in sync", 30*time.Second, func() error {
			if err := everywhere(k1.Client, pem)(); err != nil {
				return err
			}
			return everywhere(k2.Client, pem)()
		})
		time.Sleep(time.Second)
		rv1, rv2 := resourceVersions(t, k1.Client), resourceVersions(t, k2.Client)
		ctb0, _ := k1.Client.CertificatesV1beta1().ClusterTrustBundles().Get(context.Background(), testCTB, metav1.GetOptions{})
		writes0 := counter(t, metrics, "meshca_trust_publish_writes_total", nil)
		time.Sleep(quiet)
		writes := counter(t, metrics, "meshca_trust_publish_writes_total", nil) - writes0
		ctb1, _ := k1.Client.CertificatesV1beta1().ClusterTrustBundles().Get(context.Background(), testCTB, metav1.GetOptions{})
		if writes != 0 || !maps.Equal(rv1, resourceVersions(t, k1.Client)) || !maps.Equal(rv2, resourceVersions(t, k2.Client)) || ctb0.ResourceVersion != ctb1.ResourceVersion {
			t.Errorf("%v writes in %s at steady state, want 0 (resourceVersions changed: %v)", writes, quiet,
				!maps.Equal(rv1, resourceVersions(t, k1.Client)) || !maps.Equal(rv2, resourceVersions(t, k2.Client)))
		}
		t.Logf("steady state: %v writes in %s over %d ConfigMaps and 1 ClusterTrustBundle", writes, quiet, len(rv1)+len(rv2))
	})

	t.Run("cluster2 replaced (new credentials): publishing goes on through the new client", func(t *testing.T) {
		old := reg.All()[1]
		tok2b := limitedIdentity(t, k2, "meshca-broker-2", readerRules, publisherRules("", ""))
		kubeconfig2(tok2b)
		waitFor(t, "cluster2 replaced", 30*time.Second, func() error {
			if all := reg.All(); len(all) != 2 || all[1] == old {
				return errors.New("not yet")
			}
			return nil
		})
		createNamespace(t, k2.Client, "after-replace", nil)
		waitFor(t, "ConfigMap through the new client", 10*time.Second, hasBundle(k2.Client, "after-replace", pem))
		if n := len(logs.lines("cluster=cluster2", "stopping publishing to cluster", "replaced=true")); n != 1 {
			t.Errorf("%d log lines about stopping the replaced cluster, want 1", n)
		}
	})
	t.Run("cluster2 removed: no more writes there", func(t *testing.T) {
		if err := os.Remove(filepath.Join(dir, "cluster2")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "cluster2 removed", 30*time.Second, func() error {
			if len(p.Status()) != 1 {
				return errors.New("not yet")
			}
			return nil
		})
		createNamespace(t, k2.Client, "after-removal", nil)
		time.Sleep(2 * time.Second)
		if _, err := rootCertIn(k2.Client, "after-removal"); !apierrors.IsNotFound(err) {
			t.Errorf("a removed cluster was written to: %v", err)
		}
		// cluster1 goes on.
		createNamespace(t, k1.Client, "after-removal", nil)
		waitFor(t, "cluster1 goes on", 10*time.Second, hasBundle(k1.Client, "after-removal", pem))
	})
}

// liveWatch watches namespace's istio-ca-root-cert and returns once the
// watch is seen to deliver events: two API servers sharing one etcd share
// its revision counter, so a watch "from now" can be refused with "Too
// large resource version" while the API server's watch cache catches up.
// An annotation is changed to probe it (the publisher leaves annotations
// alone).
func liveWatch(t *testing.T, c kubernetes.Interface, namespace string) watch.Interface {
	t.Helper()
	cms := c.CoreV1().ConfigMaps(namespace)
	for attempt := 0; attempt < 10; attempt++ {
		w, err := cms.Watch(context.Background(), metav1.ListOptions{FieldSelector: "metadata.name=" + ConfigMapName})
		if err != nil {
			t.Fatal(err)
		}
		probe := fmt.Sprintf("probe-%d-%d", attempt, time.Now().UnixNano())
		patch := fmt.Sprintf(`{"metadata":{"annotations":{"test-probe":%q}}}`, probe)
		if _, err := cms.Patch(context.Background(), ConfigMapName, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		timeout := time.After(10 * time.Second)
	events:
		for {
			select {
			case ev, ok := <-w.ResultChan():
				if !ok || ev.Type == watch.Error {
					t.Logf("watch not established (%v); again", ev.Object)
					break events
				}
				if cm, ok := ev.Object.(*corev1.ConfigMap); ok && cm.Annotations["test-probe"] == probe {
					return w
				}
			case <-timeout:
				break events
			}
		}
		w.Stop()
	}
	t.Fatal("could not establish a watch")
	return nil
}

// runRegistry runs reg until the test ends.
func runRegistry(t testing.TB, reg *cluster.Registry) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = reg.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}
