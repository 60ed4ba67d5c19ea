package cluster

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/meshca/broker/integration/testenv"
)

// viewerToken is a token of a service account that may read what the view
// watches, bound through the returned ClusterRoleBinding.
func viewerToken(t *testing.T, kube *testenv.Kube) (token string, binding *rbacv1.ClusterRoleBinding) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kube.CreateNamespace(t, "meshca")
	kube.CreateServiceAccount(t, "meshca", "viewer")
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "meshca-viewer"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods", "serviceaccounts"}, Verbs: []string{"get", "list", "watch"}},
		{NonResourceURLs: []string{"/.well-known/openid-configuration", "/openid/v1/jwks"}, Verbs: []string{"get"}},
	}}
	if _, err := kube.Client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding = &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "meshca-viewer"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "meshca-viewer"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "meshca", Name: "viewer"}}}
	if _, err := kube.Client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// No audiences: the API server's own.
	tok, err := kube.Token(ctx, "meshca", "viewer", nil, time.Hour, "")
	if err != nil {
		t.Fatal(err)
	}
	return tok, binding
}

// until is testenv.WaitUntil.
var until = testenv.WaitUntil

// startSynced starts a view of the cluster rc reaches and waits until it
// is synced; it is stopped when the test ends.
func startSynced(t *testing.T, rc *rest.Config, opts Options) *Cluster {
	t.Helper()
	opts.TrustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")
	c, err := New("c1", rc, opts)
	if err != nil {
		t.Fatal(err)
	}
	c.Start()
	t.Cleanup(c.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if !c.WaitSynced(ctx) {
		t.Fatal("not synced")
	}
	until(t, "synced", 10*time.Second, c.Synced)
	return c
}

// TestViewStopsDecidingWhenItsWatchesAreForbidden: the view runs with a
// service account's RBAC; when the binding is removed (list/watch and the
// probe answer 403 while /livez is fine) the view stops being synced at
// once, and resumes when the binding is back.
func TestViewStopsDecidingWhenItsWatchesAreForbidden(t *testing.T) {
	kube := testenv.StartKube(t)
	tok, binding := viewerToken(t, kube)
	c := startSynced(t, kube.RESTConfigForToken(tok), Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := kube.Client.RbacV1().ClusterRoleBindings().Delete(ctx, binding.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := kube.Client.Discovery().RESTClient().Get().AbsPath("/livez").Do(ctx).Error(); err != nil {
		t.Fatalf("/livez: %v", err)
	}
	took := until(t, "not synced after the binding went", 15*time.Second, func() bool { return !c.Synced() })
	since, reason := c.Staleness()
	t.Logf("binding deleted: not synced after %s (stale %s: %s)", took.Round(time.Millisecond), since.Round(time.Millisecond), reason)
	binding.ResourceVersion = ""
	if _, err := kube.Client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	took = until(t, "synced again after the binding came back", 30*time.Second, c.Synced)
	t.Logf("binding restored: synced again after %s", took.Round(time.Millisecond))
}

// TestViewStopsDecidingWhenItsWatchesAreThrottled: a proxy in front of
// the real API server answers 429 to every pods request (as API priority
// and fairness does) while everything else passes: the view stops being
// synced within StaleAfter, and resumes when the throttling ends.
func TestViewStopsDecidingWhenItsWatchesAreThrottled(t *testing.T) {
	kube := testenv.StartKube(t)
	tok, _ := viewerToken(t, kube)
	upstream := kube.RESTConfigForToken(tok)
	rt, err := rest.TransportFor(upstream)
	if err != nil {
		t.Fatal(err)
	}
	target, err := url.Parse(upstream.Host)
	if err != nil {
		t.Fatal(err)
	}
	var throttle atomic.Bool
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = rt
	proxy.FlushInterval = -1
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if throttle.Load() && strings.Contains(r.URL.Path, "/pods") {
			w.Header().Set("Retry-After", "1")
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"TooManyRequests","message":"too many requests, please try again later","code":429}`))
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	// Closed after the view stops: Close waits for the watches it proxies.
	t.Cleanup(front.Close)
	const staleAfter = 3 * time.Second
	c := startSynced(t, &rest.Config{Host: front.URL}, Options{StaleAfter: staleAfter})
	throttle.Store(true)
	took := until(t, "not synced while throttled", staleAfter+5*time.Second, func() bool { return !c.Synced() })
	since, reason := c.Staleness()
	t.Logf("pods throttled (429): not synced after %s (StaleAfter %s; stale %s: %s)", took.Round(time.Millisecond), staleAfter, since.Round(time.Millisecond), reason)
	throttle.Store(false)
	took = until(t, "synced again", 30*time.Second, c.Synced)
	t.Logf("throttling over: synced again after %s", took.Round(time.Millisecond))
}

// TestViewStopsAtItsObjectCap: a cluster with more objects than the cap
// (pods plus service accounts) is not decided locally: a list that would
// take the cache past the cap is refused before it is stored, and objects that
// arrive by watch past the cap stop the view within a probe interval.
func TestViewStopsAtItsObjectCap(t *testing.T) {
	kube := testenv.StartKube(t)
	kube.CreateNamespace(t, "shop")
	kube.CreateServiceAccount(t, "shop", "cart")
	_, sas := func() (int, int) {
		c := startSynced(t, kube.RESTConfig, Options{})
		return c.Counts()
	}()
	// Room for the service accounts and three pods.
	maxObjects := sas + 3
	c := startSynced(t, kube.RESTConfig, Options{MaxObjects: maxObjects})
	for i := range 4 {
		kube.CreatePod(t, "shop", "cart-"+string(rune('a'+i)), "cart")
	}
	took := until(t, "not synced past the cap", 5*time.Second, func() bool { return !c.Synced() })
	_, reason := c.Staleness()
	t.Logf("%d objects past a cap of %d: not synced after %s (%s)", sas+4, maxObjects, took.Round(time.Millisecond), reason)
	if !strings.Contains(reason, "maxCachedObjects") {
		t.Fatalf("staleness reason %q does not name the cap", reason)
	}
	pods, _ := c.Counts()
	time.Sleep(1500 * time.Millisecond)
	kube.CreatePod(t, "shop", "cart-late", "cart")
	time.Sleep(1500 * time.Millisecond)
	if now, _ := c.Counts(); now != pods {
		t.Fatalf("the view kept caching after the cap: %d pods, then %d", pods, now)
	}

	// A view started on a cluster already past the cap never holds the
	// list.
	late, err := New("c2", kube.RESTConfig, Options{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), MaxObjects: maxObjects})
	if err != nil {
		t.Fatal(err)
	}
	late.Start()
	t.Cleanup(late.Stop)
	until(t, "the first list refused", 10*time.Second, func() bool {
		_, reason := late.Staleness()
		return strings.Contains(reason, "a list of")
	})
	if p, sa := late.Counts(); p+sa > maxObjects || late.Synced() {
		t.Fatalf("a view past its cap holds %d pods and %d service accounts (synced %v)", p, sa, late.Synced())
	}
}
