package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/broker/caclient"
	"github.com/meshca/broker/integration/testenv"
)

// TestAmbientImpersonationInEachCluster: ztunnel (a pod on node-a of each
// cluster) gets certificates for the workloads on its node, in the shape
// ztunnel asks (ECDSA P-256, empty subject, ImpersonatedIdentity and no
// CertSigner, a clusterid), and for nothing else.
func TestAmbientImpersonationInEachCluster(t *testing.T) {
	c1, c2 := twoClusters(t)
	for _, k := range []*testenv.Kube{c1, c2} {
		k.CreateServiceAccount(t, "istio-system", "ztunnel")
		k.CreateServiceAccount(t, "shop", "payments")
		k.CreateServiceAccount(t, "shop", "intruder")
		k.CreatePodOnNode(t, "istio-system", "ztunnel-a", "ztunnel", "node-a")
		k.CreatePodOnNode(t, "shop", "cart-a", "cart", "node-a")
		k.CreatePodOnNode(t, "shop", "intruder-a", "intruder", "node-a")
	}
	// payments runs on node-b in cluster1, on node-a in cluster2 only.
	c1.CreatePodOnNode(t, "shop", "payments-b", "payments", "node-b")
	c2.CreatePodOnNode(t, "shop", "payments-a", "payments", "node-a")
	b := startBroker(t, c1, clusterOne)
	addClusterTwo(t, b, c1, c2)
	cl := dial(t, b, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	for _, tc := range []struct {
		cluster      string
		kube         *testenv.Kube
		paymentsHere bool
	}{{"cluster1", c1, false}, {"cluster2", c2, true}} {
		t.Run(tc.cluster, func(t *testing.T) {
			token := func(ns, sa, pod string) string {
				t.Helper()
				tok, err := tc.kube.Token(ctx, ns, sa, []string{"istio-ca"}, time.Hour, pod)
				if err != nil {
					t.Fatal(err)
				}
				return tok
			}
			ztunnel := token("istio-system", "ztunnel", "ztunnel-a")
			ask := func(tok, clusterID, id string) (*caclient.Issued, error) {
				key, _ := caclient.NewKey(true)
				return cl.CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: id, Impersonate: id, Token: tok, ClusterID: clusterID, TTL: 24 * time.Hour})
			}
			got, err := ask(ztunnel, tc.cluster, cartID)
			if err != nil {
				t.Fatalf("ztunnel for cart on its node: %v", err)
			}
			if got.Chain[0].URIs[0].String() != cartID {
				t.Fatalf("issued %v", got.Chain[0].URIs)
			}
			payments := "spiffe://cluster.local/ns/shop/sa/payments"
			_, err = ask(ztunnel, tc.cluster, payments)
			if tc.paymentsHere && err != nil {
				t.Fatalf("payments runs on node-a here: %v", err)
			}
			if !tc.paymentsHere && (status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "no running pod of shop/payments is on node node-a")) {
				t.Fatalf("payments runs on node-b here: %v, want PermissionDenied naming the node", err)
			}
			refusals := []struct {
				name, token, cluster, id string
				code                     codes.Code
				mention                  string
			}{
				{"a workload (not a node agent) impersonating", token("shop", "intruder", "intruder-a"), tc.cluster, cartID, codes.PermissionDenied, "only node agents"},
				{"ztunnel with a token not bound to its pod", token("istio-system", "ztunnel", ""), tc.cluster, cartID, codes.PermissionDenied, "pod-bound"},
				{"ztunnel asking in another trust domain", ztunnel, tc.cluster, "spiffe://evil.example/ns/shop/sa/cart", codes.PermissionDenied, "trust domain"},
				{"ztunnel asking for a workload that does not run", ztunnel, tc.cluster, "spiffe://cluster.local/ns/shop/sa/ghost", codes.PermissionDenied, "no running pod"},
			}
			for _, r := range refusals {
				_, err := ask(r.token, r.cluster, r.id)
				if status.Code(err) != r.code || !strings.Contains(err.Error(), r.mention) {
					t.Errorf("%s: %v; want %s mentioning %q", r.name, err, r.code, r.mention)
				}
			}
			// A CSR naming another identity than the impersonated one.
			key, _ := caclient.NewKey(true)
			_, err = cl.CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: payments, Impersonate: cartID, Token: ztunnel, ClusterID: tc.cluster, TTL: time.Hour})
			if status.Code(err) != codes.PermissionDenied {
				t.Errorf("CSR for payments impersonating cart: %v, want PermissionDenied", err)
			}
		})
	}
	t.Run("ztunnel's pod deleted", func(t *testing.T) {
		tok, err := c1.Token(ctx, "istio-system", "ztunnel", []string{"istio-ca"}, time.Hour, "ztunnel-a")
		if err != nil {
			t.Fatal(err)
		}
		c1.DeletePod(t, "istio-system", "ztunnel-a")
		waitUntil(t, "refusal", 5*time.Second, func() bool {
			key, _ := caclient.NewKey(true)
			_, err := cl.CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: cartID, Impersonate: cartID, Token: tok, ClusterID: "cluster1", TTL: time.Hour})
			return status.Code(err) == codes.Unauthenticated
		})
	})
}
