package kube_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/broker/authn"
	"github.com/meshca/broker/authn/kube"
	"github.com/meshca/broker/integration/testenv"
)

// mint signs a token shaped like the API server's own for ns/sa (whose
// UID the API server checks), valid from exp-1h to exp.
func mint(t *testing.T, k *testenv.SigningKey, issuer, ns, sa, saUID string, exp time.Time) string {
	return k.Mint(t, testenv.TokenClaims{Issuer: issuer, Namespace: ns, ServiceAccount: sa, ServiceAccountUID: saUID,
		NotBefore: exp.Add(-time.Hour), Expiry: exp})
}

// TestAgainstKubeAPIServer runs the TokenReview authenticator against two
// real kube-apiservers sharing one etcd ("east", served by the broker, and
// "west", a different cluster with its own signing key).
func TestAgainstKubeAPIServer(t *testing.T) {
	testenv.Tool(t, "kube-apiserver") // skip before generating keys
	extra := testenv.NewSigningKey(t)
	etcd := testenv.StartEtcd(t)
	east := testenv.StartKube(t, testenv.KubeEtcd(etcd), testenv.KubeName("east"),
		testenv.KubeArgs("--service-account-key-file="+extra.File))
	west := testenv.StartKube(t, testenv.KubeEtcd(etcd), testenv.KubeName("west"))

	const ns, sa = "shop", "cart"
	const cartID = "spiffe://cluster.local/ns/shop/sa/cart"
	var cartUID string
	for _, k := range []*testenv.Kube{east, west} {
		k.CreateNamespace(t, ns)
		obj := k.CreateServiceAccount(t, ns, sa)
		if k == east {
			cartUID = string(obj.UID)
		}
	}
	east.CreatePod(t, ns, "cart-0", sa)
	east.CreatePod(t, ns, "cart-gone", sa)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	token := func(k *testenv.Kube, aud []string, pod string) string {
		t.Helper()
		tok, err := k.Token(ctx, ns, sa, aud, time.Hour, pod)
		if err != nil {
			t.Fatalf("token request in %s: %v", k.Name, err)
		}
		return tok
	}
	td := spiffeid.RequireTrustDomainFromString("cluster.local")

	// The broker of "east", running from a kubeconfig like in production.
	a, err := kube.New(kube.Config{ClusterID: "east", Kubeconfig: east.Kubeconfig, TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	// A broker that also serves "west" as a remote cluster.
	multi, err := kube.NewWithReviewer(kube.Config{ClusterID: "east", TrustDomain: td,
		Remote: kube.ClusterMap{"west": kube.ClientReviewer{Client: west.Client}}},
		kube.ClientReviewer{Client: east.Client})
	if err != nil {
		t.Fatal(err)
	}

	good := token(east, []string{"istio-ca"}, "")
	bound := token(east, []string{"istio-ca"}, "cart-0")
	gone := token(east, []string{"istio-ca"}, "cart-gone")
	east.DeletePod(t, ns, "cart-gone")

	cases := []struct {
		name        string
		auth        authn.Authenticator
		token       string
		clusterID   string
		wantKind    error
		wantMsg     string
		wantCluster string
		wantSubject string
	}{
		{name: "good token", auth: a, token: good, wantCluster: "east", wantSubject: "system:serviceaccount:shop:cart"},
		{name: "good token, own clusterid", auth: a, token: good, clusterID: "east", wantCluster: "east"},
		{name: "istio-ca among several audiences", auth: a, token: token(east, []string{east.Issuer, "istio-ca"}, ""), wantCluster: "east"},
		{name: "pod-bound token", auth: a, token: bound, wantCluster: "east", wantSubject: "system:serviceaccount:shop:cart pod=cart-0"},
		{name: "pod-bound token after its pod is deleted", auth: a, token: gone, wantKind: authn.ErrDenied, wantMsg: "invalid bearer token"},
		{name: "wrong audience", auth: a, token: token(east, []string{"vault"}, ""), wantKind: authn.ErrDenied, wantMsg: "audience"},
		{name: "issuer audience only", auth: a, token: token(east, []string{east.Issuer}, ""), wantKind: authn.ErrDenied, wantMsg: "audience"},
		{name: "self-minted token, valid (control)", auth: a, token: mint(t, extra, east.Issuer, ns, sa, cartUID, time.Now().Add(time.Hour)), wantCluster: "east"},
		{name: "expired token", auth: a, token: mint(t, extra, east.Issuer, ns, sa, cartUID, time.Now().Add(-5*time.Minute)),
			wantKind: authn.ErrDenied, wantMsg: "expired"},
		{name: "self-minted token for a wrong service-account UID", auth: a, token: mint(t, extra, east.Issuer, ns, sa, "00000000-0000-0000-0000-000000000000", time.Now().Add(time.Hour)),
			wantKind: authn.ErrDenied},
		{name: "token from west presented to east", auth: a, token: token(west, []string{"istio-ca"}, ""), wantKind: authn.ErrDenied, wantMsg: "invalid bearer token"},
		{name: "west token claiming to be east", auth: a, token: token(west, []string{"istio-ca"}, ""), clusterID: "east", wantKind: authn.ErrDenied},
		{name: "west clusterid on a single-cluster broker", auth: a, token: token(west, []string{"istio-ca"}, ""), clusterID: "west",
			wantKind: authn.ErrNoCredential, wantMsg: `unknown cluster "west"`},
		// A cluster it does not serve is left to another authenticator;
		// the chain refuses it when none claims it.
		{name: "unknown clusterid", auth: a, token: good, clusterID: "Kubernetes", wantKind: authn.ErrNoCredential, wantMsg: `unknown cluster "Kubernetes"`},
		{name: "unknown clusterid through the chain", auth: authn.Chain{a}, token: good, clusterID: "Kubernetes", wantKind: authn.ErrDenied, wantMsg: `unknown cluster "Kubernetes"`},
		{name: "west token via the remote reviewer", auth: multi, token: token(west, []string{"istio-ca"}, ""), clusterID: "west", wantCluster: "west"},
		{name: "east token sent with west clusterid", auth: multi, token: good, clusterID: "west", wantKind: authn.ErrDenied, wantMsg: "invalid bearer token"},
		{name: "garbage token", auth: a, token: "not-a-jwt", wantKind: authn.ErrDenied},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := tc.auth.Authenticate(ctx, &authn.Request{BearerToken: tc.token, ClusterID: tc.clusterID})
			if tc.wantKind != nil {
				if !errors.Is(err, tc.wantKind) {
					t.Fatalf("err = %v, want %v", err, tc.wantKind)
				}
				if !strings.Contains(err.Error(), tc.wantMsg) {
					t.Fatalf("err = %q, want it to mention %q", err, tc.wantMsg)
				}
				if strings.Contains(err.Error(), tc.token) {
					t.Fatal("error leaks the token")
				}
				t.Logf("refused: %v", err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.ID.String() != cartID || id.Cluster != tc.wantCluster {
				t.Fatalf("identity %s in %q, want %s in %q", id.ID, id.Cluster, cartID, tc.wantCluster)
			}
			if tc.wantSubject != "" && id.Subject != tc.wantSubject {
				t.Fatalf("subject = %q, want %q", id.Subject, tc.wantSubject)
			}
		})
	}

	t.Run("broker without RBAC for TokenReview", func(t *testing.T) {
		east.CreateNamespace(t, "meshca-system")
		east.CreateServiceAccount(t, "meshca-system", "broker")
		brokerToken, err := east.Token(ctx, "meshca-system", "broker", nil, time.Hour, "")
		if err != nil {
			t.Fatal(err)
		}
		limited, err := kube.New(kube.Config{ClusterID: "east", Kubeconfig: east.KubeconfigForToken(t, brokerToken), TrustDomain: td})
		if err != nil {
			t.Fatal(err)
		}
		_, err = limited.Authenticate(ctx, &authn.Request{BearerToken: good})
		if !errors.Is(err, authn.ErrUnavailable) || !strings.Contains(err.Error(), "system:auth-delegator") {
			t.Fatalf("forbidden review: %v", err)
		}
		t.Logf("without RBAC: %v", err)
		_, err = east.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "meshca-broker-auth-delegator"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:auth-delegator"},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "meshca-system", Name: "broker"}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// The authorizer learns of the binding through its informer.
		deadline := time.Now().Add(30 * time.Second)
		for {
			id, err := limited.Authenticate(ctx, &authn.Request{BearerToken: good})
			if err == nil {
				if id.ID.String() != cartID {
					t.Fatalf("identity %s", id.ID)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("still refused after the binding: %v", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	t.Run("API server stopped", func(t *testing.T) {
		east.Stop()
		start := time.Now()
		_, err := a.Authenticate(ctx, &authn.Request{BearerToken: good})
		if !errors.Is(err, authn.ErrUnavailable) {
			t.Fatalf("err = %v, want unavailable", err)
		}
		if d := time.Since(start); d > kube.DefaultTimeout+2*time.Second {
			t.Fatalf("took %v", d)
		}
		t.Logf("stopped: %v (after %v)", err, time.Since(start).Round(time.Millisecond))
		// The remote cluster is still served.
		if _, err := multi.Authenticate(ctx, &authn.Request{BearerToken: token(west, []string{"istio-ca"}, ""), ClusterID: "west"}); err != nil {
			t.Fatalf("west while east is down: %v", err)
		}
	})
}
