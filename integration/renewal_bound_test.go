package integration

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/broker/caclient"
	"github.com/meshca/broker/config"
	"github.com/meshca/broker/integration/testenv"
)

// TestRenewalEndsWithWhatMadeTheIdentityValid: a mesh certificate renews
// (key rotation) only while the pod it was obtained for, or one as old,
// still runs as the service account it was issued for; never beyond the
// presented certificate's NotAfter, through any chain of renewals; the
// same for what ztunnel obtained by impersonation; and off-cluster
// workloads (VMs, explicitly configured) renew with a fresh lifetime
// while their service account exists unchanged.
func TestRenewalEndsWithWhatMadeTheIdentityValid(t *testing.T) {
	kube := testenv.StartKube(t)
	kube.CreateNamespace(t, "shop")
	kube.CreateNamespace(t, "vms")
	kube.CreateNamespace(t, "istio-system")
	kube.CreateServiceAccount(t, "shop", "cart")
	kube.CreateServiceAccount(t, "shop", "web")
	kube.CreateServiceAccount(t, "shop", "payments")
	kube.CreateServiceAccount(t, "istio-system", "ztunnel")
	kube.CreateServiceAccount(t, "vms", "billing")
	kube.CreatePod(t, "shop", "cart-0", "cart")
	kube.CreatePod(t, "shop", "web-0", "web")
	kube.CreatePodOnNode(t, "istio-system", "ztunnel-a", "ztunnel", "node-a")
	kube.CreatePodOnNode(t, "shop", "payments-a", "payments", "node-a")
	b := startBroker(t, kube, func(c *config.Config) {
		c.Authn.OffClusterWorkloads = []string{"vms/*"}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	token := func(ns, sa, pod string) string {
		t.Helper()
		tok, err := kube.Token(ctx, ns, sa, []string{"istio-ca"}, time.Hour, pod)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	withToken := func(tok, id, impersonate string, ttl time.Duration) *tls.Certificate {
		t.Helper()
		key, _ := caclient.NewKey(true)
		got, err := dial(t, b, nil).CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: id, Token: tok, Impersonate: impersonate, TTL: ttl})
		if err != nil {
			t.Fatalf("%s with a token: %v", id, err)
		}
		return clientCert(key, got)
	}
	renew := func(cert *tls.Certificate, ttl time.Duration) (*tls.Certificate, error) {
		key, _ := caclient.NewKey(true)
		got, err := dial(t, b, cert).CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: cert.Leaf.URIs[0].String(), TTL: ttl})
		if err != nil {
			return nil, err
		}
		return clientCert(key, got), nil
	}
	mustRenew := func(cert *tls.Certificate, ttl time.Duration) *tls.Certificate {
		t.Helper()
		next, err := renew(cert, ttl)
		if err != nil {
			t.Fatalf("renewal of %s refused: %v", cert.Leaf.URIs[0], err)
		}
		return next
	}
	refused := func(what string, cert *tls.Certificate, mention string) {
		t.Helper()
		// The caches see the delete within milliseconds; allow a few seconds.
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, err := renew(cert, time.Hour)
			if status.Code(err) == codes.Unauthenticated && strings.Contains(err.Error(), mention) {
				t.Logf("%s: refused: %v", what, err)
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: renewal %v, want Unauthenticated mentioning %q", what, err, mention)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	t.Run("pod deleted, through a chain of renewals", func(t *testing.T) {
		first := withToken(token("shop", "cart", "cart-0"), cartID, "", time.Hour)
		second := mustRenew(first, 24*time.Hour)
		third := mustRenew(second, 24*time.Hour)
		for i, c := range []*tls.Certificate{second, third} {
			if c.Leaf.NotAfter.After(first.Leaf.NotAfter) {
				t.Fatalf("renewal %d expires %s, after the token's certificate (%s)", i+1, c.Leaf.NotAfter, first.Leaf.NotAfter)
			}
			if c.Leaf.PublicKey == first.Leaf.PublicKey {
				t.Fatal("renewal did not rotate the key")
			}
		}
		kube.DeletePod(t, "shop", "cart-0")
		refused("the token's certificate", first, "no running pod")
		refused("the last of a chain of renewals", third, "no running pod")
	})

	t.Run("service account deleted and recreated", func(t *testing.T) {
		cert := withToken(token("shop", "web", "web-0"), "spiffe://cluster.local/ns/shop/sa/web", "", time.Hour)
		mustRenew(cert, time.Hour)
		if err := kube.Client.CoreV1().ServiceAccounts("shop").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		refused("service account deleted", cert, "does not exist")
		// Creation times have a resolution of one second: a pod started in
		// the same second as its account counts as newer than it.
		pod, err := kube.Client.CoreV1().Pods("shop").Get(ctx, "web-0", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Until(pod.CreationTimestamp.Add(1100 * time.Millisecond)))
		kube.CreateServiceAccount(t, "shop", "web")
		// web-0 still runs under the name, but it ran as the old account.
		refused("service account recreated", cert, "newer than the service account")
	})

	t.Run("impersonated workload leaves the node", func(t *testing.T) {
		payments := "spiffe://cluster.local/ns/shop/sa/payments"
		cert := withToken(token("istio-system", "ztunnel", "ztunnel-a"), payments, payments, time.Hour)
		mustRenew(cert, time.Hour)
		kube.DeletePod(t, "shop", "payments-a")
		refused("payments gone from ztunnel's node", cert, "no running pod")
	})

	t.Run("off-cluster workload renews with a fresh lifetime until its service account changes", func(t *testing.T) {
		billing := "spiffe://cluster.local/ns/vms/sa/billing"
		// A VM bootstraps with a token not bound to any pod.
		first := withToken(token("vms", "billing", ""), billing, "", 15*time.Minute)
		next := mustRenew(first, time.Hour)
		if !next.Leaf.NotAfter.After(first.Leaf.NotAfter.Add(30 * time.Minute)) {
			t.Fatalf("VM renewal expires %s, want a fresh hour past %s", next.Leaf.NotAfter, first.Leaf.NotAfter)
		}
		if err := kube.Client.CoreV1().ServiceAccounts("vms").Delete(ctx, "billing", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		refused("VM's service account deleted", next, "does not exist")
	})

	t.Run("a Kubernetes workload not listed as off-cluster gets no fresh lifetime", func(t *testing.T) {
		kube.CreatePod(t, "shop", "cart-1", "cart")
		cert := withToken(token("shop", "cart", "cart-1"), cartID, "", 15*time.Minute)
		next := mustRenew(cert, 24*time.Hour)
		if next.Leaf.NotAfter.After(cert.Leaf.NotAfter) {
			t.Fatalf("renewal expires %s, after the presented certificate's %s", next.Leaf.NotAfter, cert.Leaf.NotAfter)
		}
	})
}
