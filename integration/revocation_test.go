package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshca/broker/caclient"
	"github.com/meshca/broker/integration/testenv"
)

// TestLocalVerificationSeesRevocation: in the default (local) mode the
// broker verifies tokens itself, and still refuses every token whose
// bound objects are gone or were recreated, or that is not the cluster's
// own, expired or not yet valid. Crafted tokens are signed with a key the
// API server also trusts, so each case isolates the one claim that is
// wrong.
func TestLocalVerificationSeesRevocation(t *testing.T) {
	extra := testenv.NewSigningKey(t)
	kube := testenv.StartKube(t, testenv.KubeArgs("--service-account-key-file="+extra.File))
	kube.CreateNamespace(t, "shop")
	sa := kube.CreateServiceAccount(t, "shop", "cart")
	pod := kube.CreatePod(t, "shop", "cart-0", "cart")
	b := startBroker(t, kube, nil)
	cl := dial(t, b, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	issue := func(tok string) error {
		key, _ := caclient.NewKey(true)
		_, err := cl.CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: cartID, Token: tok, TTL: time.Hour})
		return err
	}
	claims := func(mod func(c *testenv.TokenClaims)) string {
		c := testenv.TokenClaims{Issuer: kube.Issuer, Namespace: "shop", ServiceAccount: "cart", ServiceAccountUID: string(sa.UID),
			PodName: "cart-0", PodUID: string(pod.UID)}
		if mod != nil {
			mod(&c)
		}
		return extra.Mint(t, c)
	}
	cases := []struct {
		name    string
		token   string
		mention string // "" means accepted
	}{
		{"a well-formed crafted token is accepted (the control)", claims(nil), ""},
		{"service account UID of another incarnation", claims(func(c *testenv.TokenClaims) { c.ServiceAccountUID = "00000000-0000-0000-0000-000000000001" }), "deleted and recreated"},
		{"pod UID of another incarnation", claims(func(c *testenv.TokenClaims) { c.PodUID = "00000000-0000-0000-0000-000000000002" }), "deleted and recreated"},
		{"a pod that never existed", claims(func(c *testenv.TokenClaims) { c.PodName = "ghost" }), "no longer exists"},
		{"a foreign issuer", claims(func(c *testenv.TokenClaims) { c.Issuer = "https://evil.example" }), "issuer"},
		{"expired", claims(func(c *testenv.TokenClaims) {
			c.NotBefore, c.Expiry = time.Now().Add(-2*time.Hour), time.Now().Add(-5*time.Minute)
		}), "expired"},
		{"not yet valid", claims(func(c *testenv.TokenClaims) {
			c.NotBefore, c.Expiry = time.Now().Add(10*time.Minute), time.Now().Add(2*time.Hour)
		}), "not valid before"},
		{"another audience", claims(func(c *testenv.TokenClaims) { c.Audiences = []string{"vault"} }), "audiences"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := issue(tc.token)
			if tc.mention == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("%v; want Unauthenticated mentioning %q", err, tc.mention)
			}
		})
	}

	// Real tokens, then their objects deleted: the delay from the delete
	// call's return to the first refusal is the revocation delay.
	measure := func(t *testing.T, tok string, del func()) time.Duration {
		t.Helper()
		if err := issue(tok); err != nil {
			t.Fatal(err)
		}
		del()
		delay := waitUntil(t, "refusal", 5*time.Second, func() bool { return status.Code(issue(tok)) == codes.Unauthenticated })
		if delay > 2*time.Second {
			t.Errorf("refused %s after the deletion, want at most 2s", delay)
		}
		return delay
	}
	t.Run("pod deleted", func(t *testing.T) {
		kube.CreatePod(t, "shop", "cart-1", "cart")
		tok, err := kube.Token(ctx, "shop", "cart", []string{"istio-ca"}, time.Hour, "cart-1")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("revocation delay: %s", measure(t, tok, func() { kube.DeletePod(t, "shop", "cart-1") }))
	})
	t.Run("pod held in Terminating by a finalizer", func(t *testing.T) {
		// The API server keeps accepting such a token until 60 s after the
		// deletion timestamp (here the end of a 30 s grace period that no
		// kubelet will ever end); the broker refuses it once the pod is
		// being deleted.
		kube.CreatePod(t, "shop", "cart-held", "cart")
		if _, err := kube.Client.CoreV1().Pods("shop").Patch(ctx, "cart-held", types.MergePatchType,
			[]byte(`{"metadata":{"finalizers":["meshca.test/hold"]}}`), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		tok, err := kube.Token(ctx, "shop", "cart", []string{"istio-ca"}, time.Hour, "cart-held")
		if err != nil {
			t.Fatal(err)
		}
		delay := measure(t, tok, func() {
			if err := kube.Client.CoreV1().Pods("shop").Delete(ctx, "cart-held", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		})
		t.Logf("refusal delay (pod deleted, held by a finalizer): %s", delay)
		if err := issue(tok); status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "is being deleted") {
			t.Fatalf("token of the terminating pod: %v; want Unauthenticated saying it is being deleted", err)
		}
		held, err := kube.Client.CoreV1().Pods("shop").Get(ctx, "cart-held", metav1.GetOptions{})
		if err != nil || held.DeletionTimestamp == nil {
			t.Fatalf("the pod should still be there, terminating: %v", err)
		}
		// What TokenReview would have said: still authenticated.
		st, err := kube.TokenReview(ctx, tok, []string{"istio-ca"})
		if err != nil || !st.Authenticated {
			t.Fatalf("TokenReview of the terminating pod's token: %+v, %v; the API server was expected to accept it still", st, err)
		}
		t.Logf("TokenReview still accepts it (deletion timestamp %s, %s from now)", held.DeletionTimestamp.UTC().Format(time.RFC3339), time.Until(held.DeletionTimestamp.Time).Round(time.Second))
	})
	t.Run("service account deleted, then recreated under the same name", func(t *testing.T) {
		kube.CreateServiceAccount(t, "shop", "payments")
		tok, err := kube.Token(ctx, "shop", "payments", []string{"istio-ca"}, time.Hour, "")
		if err != nil {
			t.Fatal(err)
		}
		key, _ := caclient.NewKey(true)
		payments := "spiffe://cluster.local/ns/shop/sa/payments"
		if _, err := cl.CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: payments, Token: tok, TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
		if err := kube.Client.CoreV1().ServiceAccounts("shop").Delete(ctx, "payments", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		delay := waitUntil(t, "refusal", 5*time.Second, func() bool {
			_, err := cl.CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: payments, Token: tok, TTL: time.Hour})
			return status.Code(err) == codes.Unauthenticated
		})
		t.Logf("revocation delay (service account deleted): %s", delay)
		if delay > 2*time.Second {
			t.Errorf("refused %s after the deletion, want at most 2s", time.Since(start))
		}
		kube.CreateServiceAccount(t, "shop", "payments")
		time.Sleep(500 * time.Millisecond) // the new incarnation reaches the cache
		_, err = cl.CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: payments, Token: tok, TTL: time.Hour})
		if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "recreated") {
			t.Fatalf("the old token after the service account was recreated: %v", err)
		}
	})
}
