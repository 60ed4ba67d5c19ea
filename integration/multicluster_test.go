package integration

import (
	"context"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/broker/broker"
	"github.com/meshca/broker/caclient"
	"github.com/meshca/broker/cluster"
	"github.com/meshca/broker/config"
	"github.com/meshca/broker/integration/testenv"
)

// remoteKubeconfig is what `istioctl create-remote-secret` puts in a
// remote secret: a kubeconfig for the remote cluster with the reader's
// token and CA inline.
func remoteKubeconfig(t testing.TB, remote *testenv.Kube) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok, err := remote.Token(ctx, "istio-system", "meshca-reader", []string{remote.Issuer}, time.Hour, "")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(remote.KubeconfigForToken(t, tok))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// writeRemoteSecret creates or replaces an Istio remote secret in the
// broker's cluster.
func writeRemoteSecret(t testing.TB, local *testenv.Kube, name string, data map[string][]byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "istio-system", Labels: map[string]string{cluster.MultiClusterLabel: "true"}},
		Data:       data,
	}
	secrets := local.Client.CoreV1().Secrets("istio-system")
	if _, err := secrets.Create(ctx, s, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
		_, err = secrets.Update(ctx, s, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	} else if err != nil {
		t.Fatal(err)
	}
}

// waitUntil is testenv.WaitUntil.
var waitUntil = testenv.WaitUntil

func remoteServing(b *broker.Broker, id string) *cluster.Cluster {
	c, err := b.Clusters().Get(id)
	if err != nil || !c.Synced() {
		return nil
	}
	return c
}

// twoClusters starts two API servers on one etcd standing for cluster1
// (the broker's) and cluster2, each with istio-system and shop/cart, and
// cluster2 with the reader identity deploy/remote-reader.yaml grants.
func twoClusters(t *testing.T) (c1, c2 *testenv.Kube) {
	t.Helper()
	etcd := testenv.StartEtcd(t)
	c1 = testenv.StartKube(t, testenv.KubeEtcd(etcd), testenv.KubeName("cluster1"))
	c2 = testenv.StartKube(t, testenv.KubeEtcd(etcd), testenv.KubeName("cluster2"))
	for _, k := range []*testenv.Kube{c1, c2} {
		k.CreateNamespace(t, "istio-system")
		k.CreateNamespace(t, "shop")
		k.CreateServiceAccount(t, "shop", "cart")
	}
	applyManifest(t, c2, "../deploy/remote-reader.yaml", false)
	return c1, c2
}

// clusterOne configures a broker in cluster1 that reads remote secrets
// from istio-system.
func clusterOne(c *config.Config) {
	c.ClusterID = "cluster1"
	c.Authn.Kubernetes.Clusters.SecretNamespace = "istio-system"
	// The test API servers listen on 127.0.0.1.
	c.Authn.Kubernetes.Clusters.AllowLoopback = true
	// The rotation test sends about a thousand certificates for one
	// identity within seconds, beyond the per-identity budget's burst.
	c.Limits.Issuance.Burst = 1 << 20
}

// addClusterTwo writes cluster2's remote secret into cluster1 and waits
// until the broker serves cluster2; it returns how long that took.
func addClusterTwo(t *testing.T, b *broker.Broker, c1, c2 *testenv.Kube) time.Duration {
	t.Helper()
	writeRemoteSecret(t, c1, "istio-remote-secret-cluster2", map[string][]byte{"cluster2": remoteKubeconfig(t, c2)})
	return waitUntil(t, "cluster2 synced from its remote secret", 20*time.Second, func() bool { return remoteServing(b, "cluster2") != nil })
}

// TestMultiClusterFromRemoteSecrets: one broker in cluster1 serves
// cluster2 through a remote secret written as istioctl writes it, with the
// reader identity deploy/remote-reader.yaml grants.
func TestMultiClusterFromRemoteSecrets(t *testing.T) {
	c1, c2 := twoClusters(t)
	b := startBroker(t, c1, func(c *config.Config) {
		clusterOne(c)
		c.Authn.Kubernetes.Clusters.SyncTimeout = config.Duration{Duration: 10 * time.Second}
	})
	cl := dial(t, b, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	token := func(k *testenv.Kube, pod string) string {
		t.Helper()
		tok, err := k.Token(ctx, "shop", "cart", []string{"istio-ca"}, time.Hour, pod)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	issue := func(tok, clusterID string) error {
		key, _ := caclient.NewKey(true)
		got, err := cl.CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: cartID, Token: tok, ClusterID: clusterID, TTL: time.Hour})
		if err == nil && got.Chain[0].URIs[0].String() != cartID {
			t.Fatalf("issued %v, want %s", got.Chain[0].URIs, cartID)
		}
		return err
	}

	c2tok := token(c2, "")
	if err := issue(c2tok, "cluster2"); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), `"cluster2"`) {
		t.Fatalf("before the remote secret: %v, want Unauthenticated naming cluster2", err)
	}
	took := addClusterTwo(t, b, c1, c2)
	t.Logf("cluster2 served %s after its remote secret was written", took.Round(time.Millisecond))

	t.Run("each cluster's token with its own cluster ID, the same SPIFFE ID", func(t *testing.T) {
		if err := issue(c2tok, "cluster2"); err != nil {
			t.Fatalf("cluster2's token: %v", err)
		}
		if err := issue(token(c1, ""), "cluster1"); err != nil {
			t.Fatalf("cluster1's token: %v", err)
		}
	})
	t.Run("a token presented with the other cluster's ID is refused", func(t *testing.T) {
		for _, tc := range []struct{ tok, id string }{{c2tok, "cluster1"}, {c2tok, ""}, {token(c1, ""), "cluster2"}} {
			if err := issue(tc.tok, tc.id); status.Code(err) != codes.Unauthenticated {
				t.Errorf("clusterid %q: %v, want Unauthenticated", tc.id, err)
			}
		}
	})
	t.Run("revocation in the remote cluster", func(t *testing.T) {
		c2.CreatePod(t, "shop", "cart-r", "cart")
		tok := token(c2, "cart-r")
		if err := issue(tok, "cluster2"); err != nil {
			t.Fatal(err)
		}
		c2.DeletePod(t, "shop", "cart-r")
		delay := waitUntil(t, "refusal after the pod's deletion", 5*time.Second, func() bool {
			return status.Code(issue(tok, "cluster2")) == codes.Unauthenticated
		})
		t.Logf("deleted pod's token refused %s after the deletion returned", delay.Round(time.Millisecond))
		if delay > 2*time.Second {
			t.Errorf("revocation took %s, want at most 2s", delay)
		}
	})
	t.Run("broken, exec-plugin, duplicate and local-ID kubeconfigs do not disturb the others", func(t *testing.T) {
		good := remoteKubeconfig(t, c2)
		exec := strings.Replace(string(good), "    token: ", "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/sh\n    token: ", 1)
		writeRemoteSecret(t, c1, "istio-remote-secret-broken", map[string][]byte{
			"cluster3": []byte("this: is: not: a kubeconfig"),
			"cluster4": []byte(exec),
			"cluster1": good, // the local cluster's ID: ignored
		})
		// A later Secret claiming cluster2, pointing at the wrong cluster.
		c1tok, err := c1.Token(ctx, "shop", "cart", []string{c1.Issuer}, time.Hour, "")
		if err != nil {
			t.Fatal(err)
		}
		impostor, err := os.ReadFile(c1.KubeconfigForToken(t, c1tok))
		if err != nil {
			t.Fatal(err)
		}
		writeRemoteSecret(t, c1, "istio-remote-secret-impostor", map[string][]byte{"cluster2": impostor})
		time.Sleep(2 * time.Second)
		for _, id := range []string{"cluster3", "cluster4"} {
			if _, err := b.Clusters().Get(id); err == nil {
				t.Errorf("%s was added from a refused kubeconfig", id)
			}
		}
		if err := issue(c2tok, "cluster2"); err != nil {
			t.Errorf("cluster2 after the bad secrets: %v", err)
		}
		if err := issue(token(c1, ""), "cluster1"); err != nil {
			t.Errorf("cluster1 after a secret naming it: %v", err)
		}
		// The impostor would own cluster2 once its owner is deleted
		// (below): it goes first.
		for _, name := range []string{"istio-remote-secret-broken", "istio-remote-secret-impostor"} {
			if err := c1.Client.CoreV1().Secrets("istio-system").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Run("rotating the remote secret's credentials fails no request", func(t *testing.T) {
		before := remoteServing(b, "cluster2")
		var failures, served atomic.Int32
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if err := issue(c2tok, "cluster2"); err != nil {
						failures.Add(1)
						t.Logf("during rotation: %v", err)
					} else {
						served.Add(1)
					}
				}
			}()
		}
		time.Sleep(300 * time.Millisecond)
		writeRemoteSecret(t, c1, "istio-remote-secret-cluster2", map[string][]byte{"cluster2": remoteKubeconfig(t, c2)})
		waitUntil(t, "the rotated client serving", 20*time.Second, func() bool {
			c := remoteServing(b, "cluster2")
			return c != nil && c != before
		})
		time.Sleep(500 * time.Millisecond)
		close(stop)
		wg.Wait()
		t.Logf("rotation: %d requests served, %d failed", served.Load(), failures.Load())
		if failures.Load() != 0 || served.Load() == 0 {
			t.Fatalf("%d requests failed during the rotation (%d served)", failures.Load(), served.Load())
		}
	})
	t.Run("the real Istio agent in cluster2", func(t *testing.T) {
		c2.CreatePod(t, "shop", "cart-agent", "cart")
		got, err := testenv.RunPilotAgent(t, testenv.PilotAgentOptions{
			CAAddr: b.Addr(), Token: token(c2, "cart-agent"), RootPEM: rootsPEM(t, b),
			Namespace: "shop", PodName: "cart-agent", ServiceAccount: "cart", ClusterID: "cluster2", ECDSA: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		checkAgentCerts(t, got, cartID, b, "ECDSA")
	})
	t.Run("deleting the remote secret removes the cluster", func(t *testing.T) {
		if err := c1.Client.CoreV1().Secrets("istio-system").Delete(ctx, "istio-remote-secret-cluster2", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		delay := waitUntil(t, "cluster2's tokens refused", 10*time.Second, func() bool {
			err := issue(c2tok, "cluster2")
			return status.Code(err) == codes.Unauthenticated && strings.Contains(err.Error(), "unknown cluster")
		})
		t.Logf("cluster2 removed %s after its secret was deleted", delay.Round(time.Millisecond))
	})
}
