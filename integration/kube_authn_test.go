package integration

import (
	"context"
	"crypto/tls"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/broker/caclient"
	"github.com/meshca/broker/integration/testenv"
)

// TestKubernetesAuthentication proves, against a real API server, who gets
// a certificate through the broker and who is refused, with which code.
func TestKubernetesAuthentication(t *testing.T) {
	etcd := testenv.StartEtcd(t)
	kube := testenv.StartKube(t, testenv.KubeEtcd(etcd), testenv.KubeName("east"))
	other := testenv.StartKube(t, testenv.KubeEtcd(etcd), testenv.KubeName("west"))
	for _, k := range []*testenv.Kube{kube, other} {
		k.CreateNamespace(t, "shop")
		k.CreateServiceAccount(t, "shop", "cart")
	}
	kube.CreatePod(t, "shop", "cart-0", "cart")
	kube.CreatePod(t, "shop", "cart-gone", "cart")
	b := startBroker(t, kube, nil)
	cl := dial(t, b, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	token := func(k *testenv.Kube, aud, pod string) string {
		t.Helper()
		tok, err := k.Token(ctx, "shop", "cart", []string{aud}, time.Hour, pod)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	good := token(kube, "istio-ca", "cart-0")
	gone := token(kube, "istio-ca", "cart-gone")
	kube.DeletePod(t, "shop", "cart-gone")

	const cartID = "spiffe://cluster.local/ns/shop/sa/cart"
	cases := []struct {
		name      string
		token     string
		clusterID string
		spiffeID  string
		code      codes.Code
		mention   string
	}{
		{"pod-bound token", good, "Kubernetes", cartID, codes.OK, ""},
		{"no clusterid means the local cluster", good, "", cartID, codes.OK, ""},
		{"no SAN in the CSR gets the caller's ID", good, "", "", codes.OK, ""},
		{"wrong audience", token(kube, "vault", "cart-0"), "", cartID, codes.Unauthenticated, "audience"},
		{"pod deleted", gone, "", cartID, codes.Unauthenticated, "pod shop/cart-gone it is bound to no longer exists"},
		{"another namespace's identity", good, "", "spiffe://cluster.local/ns/billing/sa/cart", codes.PermissionDenied, "ns/billing"},
		{"another service account's identity", good, "", "spiffe://cluster.local/ns/shop/sa/admin", codes.PermissionDenied, "sa/admin"},
		{"unknown cluster", good, "west", cartID, codes.Unauthenticated, `"west"`},
		{"another cluster's token", token(other, "istio-ca", ""), "", cartID, codes.Unauthenticated, ""},
		{"not a token", "not-a-jwt", "", cartID, codes.Unauthenticated, ""},
		{"no token", "", "", cartID, codes.Unauthenticated, "no credential"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key, _ := caclient.NewKey(true)
			issued, err := cl.CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: tc.spiffeID, Token: tc.token, ClusterID: tc.clusterID, TTL: time.Hour})
			t.Logf("broker answered: %v", status.Convert(err).Message())
			if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.mention) {
				t.Fatalf("got %v, want %s mentioning %q", err, tc.code, tc.mention)
			}
			if tc.code == codes.OK && issued.Chain[0].URIs[0].String() != cartID {
				t.Fatalf("issued %v", issued.Chain[0].URIs)
			}
		})
	}

	t.Run("renewal with the mesh certificate, no token", func(t *testing.T) {
		key, _ := caclient.NewKey(true)
		issued, err := cl.CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: cartID, Token: good, TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		renewer := dial(t, b, clientCert(key, issued))
		newKey, _ := caclient.NewKey(true)
		renewed, err := renewer.CreateCertificate(ctx, caclient.Request{Key: newKey, SPIFFEID: cartID, TTL: time.Hour})
		if err != nil {
			t.Fatalf("renewal refused: %v", err)
		}
		if renewed.Chain[0].URIs[0].String() != cartID {
			t.Fatalf("renewed as %v", renewed.Chain[0].URIs)
		}
		// The certificate proves cart, and only cart.
		_, err = renewer.CreateCertificate(ctx, caclient.Request{Key: newKey, SPIFFEID: "spiffe://cluster.local/ns/shop/sa/admin", TTL: time.Hour})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("renewal for another identity: %v", err)
		}
	})

	t.Run("certificate from a foreign CA is refused", func(t *testing.T) {
		ca := testenv.NewCA(t, "foreign")
		certPEM, keyPEM := ca.Issue(t, testenv.LeafOptions{URIs: []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/shop/sa/cart"}}})
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		foreign := dial(t, b, &pair)
		key, _ := caclient.NewKey(true)
		_, err = foreign.CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: cartID, TTL: time.Hour})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("got %v, want Unauthenticated", err)
		}
	})

	t.Run("API server down is Unavailable", func(t *testing.T) {
		down := testenv.StartKube(t, testenv.KubeEtcd(etcd), testenv.KubeName("flaky"))
		down.CreateNamespace(t, "shop")
		down.CreateServiceAccount(t, "shop", "cart")
		tok := token(down, "istio-ca", "")
		bd := startBroker(t, down, nil)
		c := dial(t, bd, nil)
		key, _ := caclient.NewKey(true)
		if _, err := c.CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: cartID, Token: tok, TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
		stopped := time.Now()
		down.Stop()
		// A blip shorter than the staleness bound (10s) is ridden out
		// on the caches; past it the broker cannot see deletions, so it
		// stops deciding locally and says Unavailable.
		var err error
		for time.Since(stopped) < 20*time.Second {
			_, err = c.CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: cartID, Token: tok, TTL: time.Hour})
			if status.Code(err) == codes.Unavailable {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("API server stopped for %s: got %v, want Unavailable", time.Since(stopped).Round(time.Second), err)
		}
		if d := time.Since(stopped); d < 8*time.Second {
			t.Errorf("Unavailable after %s: a blip shorter than 10s should be ridden out", d.Round(time.Millisecond))
		}
		t.Logf("Unavailable %s after the API server stopped", time.Since(stopped).Round(time.Millisecond))
	})
}
