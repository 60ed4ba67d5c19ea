package cluster

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/broker/integration/testenv"
)

// remoteSetup is a registry in cluster A (the local one, holding the
// remote secrets in istio-system) and cluster B, a second real API
// server, with the viewer identity.
type remoteSetup struct {
	a, b *testenv.Kube
	reg  *Registry
	logs *testenv.LogBuffer
}

func startRemoteSetup(t *testing.T, syncTimeout time.Duration) *remoteSetup {
	t.Helper()
	etcd := testenv.StartEtcd(t)
	s := &remoteSetup{
		a:    testenv.StartKube(t, testenv.KubeEtcd(etcd), testenv.KubeName("cluster-a")),
		b:    testenv.StartKube(t, testenv.KubeEtcd(etcd), testenv.KubeName("cluster-b")),
		logs: &testenv.LogBuffer{},
	}
	s.a.CreateNamespace(t, "istio-system")
	viewerToken(t, s.b)
	var h slog.Handler = slog.NewTextHandler(s.logs, nil)
	if os.Getenv("MESHCA_TEST_LOG") != "" {
		h = teeHandler{slog.NewTextHandler(os.Stderr, nil), h}
	}
	reg, err := NewRegistry(RegistryConfig{
		LocalID: "cluster-a", Local: s.a.RESTConfig, SecretNamespace: "istio-system",
		// The test API servers listen on 127.0.0.1.
		KubeconfigPolicy: KubeconfigPolicy{AllowLoopback: true},
		Options: Options{
			TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"),
			SyncTimeout: syncTimeout, Log: slog.New(h),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = reg.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	s.reg = reg
	return s
}

// teeHandler logs to both handlers (the test's buffer, and stderr when
// MESHCA_TEST_LOG is set).
type teeHandler [2]slog.Handler

func (h teeHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h teeHandler) Handle(ctx context.Context, r slog.Record) error {
	_ = h[0].Handle(ctx, r.Clone())
	return h[1].Handle(ctx, r)
}
func (h teeHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return teeHandler{h[0].WithAttrs(a), h[1].WithAttrs(a)}
}
func (h teeHandler) WithGroup(n string) slog.Handler {
	return teeHandler{h[0].WithGroup(n), h[1].WithGroup(n)}
}

// kubeconfigB is a kubeconfig for cluster B with token, as istioctl
// writes it (server, CA and token inline).
func (s *remoteSetup) kubeconfigB(t *testing.T, token string) []byte {
	t.Helper()
	raw, err := os.ReadFile(s.b.KubeconfigForToken(t, token))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// viewerB is a fresh token of cluster B's viewer (each call a new one).
func (s *remoteSetup) viewerB(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok, err := s.b.Token(ctx, "meshca", "viewer", nil, time.Hour, "")
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// writeSecret creates or updates a remote secret in cluster A.
func (s *remoteSetup) writeSecret(t *testing.T, name string, data map[string][]byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "istio-system", Labels: map[string]string{MultiClusterLabel: "true"}},
		Data:       data,
	}
	secrets := s.a.Client.CoreV1().Secrets("istio-system")
	if _, err := secrets.Create(ctx, sec, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
		if _, err := secrets.Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	} else if err != nil {
		t.Fatal(err)
	}
}

// servingB is the synced view of cluster-b the registry serves, or nil.
func (s *remoteSetup) servingB() *Cluster {
	c, err := s.reg.Get("cluster-b")
	if err != nil || !c.Synced() {
		return nil
	}
	return c
}

// load keeps sending requests that need cluster B (the registry's view,
// and a list through its client, with its credentials) from 4 workers
// until stop is called, which returns the counts and the views that
// served them.
func (s *remoteSetup) load(t *testing.T) (stop func() (served, failed int64, views map[*Cluster]int64)) {
	var okN, failN atomic.Int64
	var mu sync.Mutex
	views := map[*Cluster]int64{}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-quit:
					return
				default:
				}
				c, err := s.reg.Get("cluster-b")
				if err == nil {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					_, err = c.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{Limit: 1})
					cancel()
				}
				if err != nil {
					if failN.Add(1) <= 5 {
						t.Logf("request for cluster-b failed: %v", err)
					}
					continue
				}
				okN.Add(1)
				mu.Lock()
				views[c]++
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	return func() (int64, int64, map[*Cluster]int64) {
		close(quit)
		wg.Wait()
		return okN.Load(), failN.Load(), views
	}
}

// TestRotationToABrokenCredentialKeepsTheOldClient: cluster B's remote
// secret is rotated to a token that does not authenticate; for longer
// than the sync timeout every request for cluster B is served by the old
// client, the failed credential is logged as an error naming the Secret
// and the cluster, and a good credential written afterwards is swapped in.
func TestRotationToABrokenCredentialKeepsTheOldClient(t *testing.T) {
	const syncTimeout = 2 * time.Second
	s := startRemoteSetup(t, syncTimeout)
	s.writeSecret(t, "istio-remote-secret-b", map[string][]byte{"cluster-b": s.kubeconfigB(t, s.viewerB(t))})
	took := until(t, "cluster-b served", 30*time.Second, func() bool { return s.servingB() != nil })
	t.Logf("cluster-b synced %s after its remote secret was written", took.Round(time.Millisecond))
	before := s.servingB()

	stop := s.load(t)
	s.writeSecret(t, "istio-remote-secret-b", map[string][]byte{"cluster-b": s.kubeconfigB(t, "not-a-token")})
	brokenAt := time.Now()
	until(t, "the broken credential reported", syncTimeout+10*time.Second, func() bool {
		return strings.Contains(s.logs.String(), "new credential failed")
	})
	time.Sleep(time.Until(brokenAt.Add(2*syncTimeout + time.Second)))
	served, failed, views := stop()
	t.Logf("broken credential for %s (sync timeout %s): %d requests for cluster-b served, %d failed, by %d client(s)",
		time.Since(brokenAt).Round(time.Millisecond), syncTimeout, served, failed, len(views))
	if failed != 0 || served == 0 {
		t.Fatalf("%d requests failed while the rotated credential was broken (%d served)", failed, served)
	}
	if len(views) != 1 || views[before] != served {
		t.Fatalf("requests served by %d views, want all by the old one", len(views))
	}
	if c, err := s.reg.Get("cluster-b"); err != nil || c != before {
		t.Fatalf("serving view changed to %p (%v), want the old one", c, err)
	}
	logs := s.logs.String()
	line := ""
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "new credential failed") {
			line = l
			break
		}
	}
	if !strings.Contains(line, "level=ERROR") || !strings.Contains(line, `source="secret istio-system/istio-remote-secret-b"`) || !strings.Contains(line, "cluster=cluster-b") {
		t.Fatalf("the failed credential's log line does not name the Secret and cluster at error level: %s", line)
	}
	t.Logf("logged: %s", line)

	stop = s.load(t)
	s.writeSecret(t, "istio-remote-secret-b", map[string][]byte{"cluster-b": s.kubeconfigB(t, s.viewerB(t))})
	took = until(t, "the good credential swapped in", 30*time.Second, func() bool {
		c := s.servingB()
		return c != nil && c != before
	})
	time.Sleep(300 * time.Millisecond)
	served, failed, views = stop()
	t.Logf("good credential swapped in %s after it was written; %d requests served, %d failed, by %d clients", took.Round(time.Millisecond), served, failed, len(views))
	if failed != 0 {
		t.Fatalf("%d requests failed during the second rotation", failed)
	}
	if before.State() != Stopped {
		t.Errorf("old view is %s after the swap, want stopped", before.State())
	}
}

// TestOwnerDeletedHandsTheClusterOver: two Secrets claim cluster B; the
// older owns it; when it is deleted the other serves cluster B within
// seconds, with no request failing meanwhile.
func TestOwnerDeletedHandsTheClusterOver(t *testing.T) {
	s := startRemoteSetup(t, 10*time.Second)
	s.writeSecret(t, "a-owner", map[string][]byte{"cluster-b": s.kubeconfigB(t, s.viewerB(t))})
	until(t, "cluster-b served", 30*time.Second, func() bool { return s.servingB() != nil })
	owner := s.servingB()
	s.writeSecret(t, "b-standby", map[string][]byte{"cluster-b": s.kubeconfigB(t, s.viewerB(t))})
	time.Sleep(time.Second)
	if c := s.servingB(); c != owner {
		t.Fatal("the newer Secret took cluster-b over from the older one")
	}
	if !strings.Contains(s.logs.String(), "several remote cluster configurations claim one cluster") {
		t.Error("the second claim was not logged")
	}

	stop := s.load(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.a.Client.CoreV1().Secrets("istio-system").Delete(ctx, "a-owner", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	took := until(t, "cluster-b handed to the other Secret", 20*time.Second, func() bool {
		c := s.servingB()
		return c != nil && c != owner
	})
	time.Sleep(300 * time.Millisecond)
	served, failed, _ := stop()
	t.Logf("hand-over: cluster-b served from the remaining Secret %s after the owner was deleted; %d requests served, %d failed meanwhile", took.Round(time.Millisecond), served, failed)
	if took > 5*time.Second {
		t.Errorf("hand-over took %s, want within seconds", took)
	}
	if failed != 0 {
		t.Errorf("%d requests failed during the hand-over", failed)
	}
	if !strings.Contains(s.logs.String(), "handed to the next configuration") {
		t.Error("the hand-over was not logged")
	}
}
