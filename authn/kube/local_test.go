package kube

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"

	"github.com/meshca/broker/authn"
	"github.com/meshca/broker/authn/jwks"
	"github.com/meshca/broker/cluster"
)

// fakeCluster is a cluster whose token verification, caches and API
// server answers are set by the test.
type fakeCluster struct {
	synced   bool
	claims   *jwks.Claims
	claimErr error
	sas      map[string]string // ns/name -> uid
	pods     map[string]cluster.Pod
	issuer   string
	// reviewPod is the pod TokenReview reports the token bound to.
	reviewPod *cluster.Pod
	reviews   int
}

func (f *fakeCluster) Review(context.Context, string, []string) (*authenticationv1.TokenReviewStatus, error) {
	f.reviews++
	st := &authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: []string{DefaultAudience},
		User: authenticationv1.UserInfo{Username: "system:serviceaccount:shop:cart", UID: "sa-1"}}
	if p := f.reviewPod; p != nil {
		st.User.Extra = map[string]authenticationv1.ExtraValue{PodNameExtra: {p.Name}, podUIDExtra: {p.UID}}
	}
	return st, nil
}
func (f *fakeCluster) Issuer() string { return f.issuer }
func (f *fakeCluster) VerifyToken(context.Context, string) (*jwks.Claims, error) {
	return f.claims, f.claimErr
}
func (f *fakeCluster) Synced() bool { return f.synced }
func (f *fakeCluster) ServiceAccountUID(ns, name string) (string, bool) {
	uid, ok := f.sas[ns+"/"+name]
	return uid, ok
}
func (f *fakeCluster) Pod(ns, name string) (cluster.Pod, bool) {
	p, ok := f.pods[ns+"/"+name]
	return p, ok
}

type fakeClusters map[string]*fakeCluster

func (f fakeClusters) Get(id string) (Cluster, string, error) {
	if id == "" {
		id = "east"
	}
	c, ok := f[id]
	if !ok {
		return nil, "", fmt.Errorf("%w %q", cluster.ErrUnknown, id)
	}
	return c, id, nil
}

var errUnknownKeyForTest = jwks.ErrUnknownKey

func boundClaims() *jwks.Claims {
	return &jwks.Claims{Namespace: "shop", ServiceAccount: "cart", ServiceAccountUID: "sa-1", Bound: true,
		PodName: "cart-0", PodUID: "pod-1", NodeName: "node-a", Subject: "system:serviceaccount:shop:cart"}
}

func livePods() map[string]cluster.Pod {
	return map[string]cluster.Pod{"shop/cart-0": {Name: "cart-0", Namespace: "shop", UID: "pod-1", ServiceAccount: "cart", Node: "node-a"}}
}

func TestLocalVerification(t *testing.T) {
	live := func() *fakeCluster {
		return &fakeCluster{synced: true, claims: boundClaims(), issuer: testIssuer,
			sas:  map[string]string{"shop/cart": "sa-1"},
			pods: livePods()}
	}
	with := func(mod func(f *fakeCluster)) *fakeCluster { f := live(); mod(f); return f }
	pod := func(mod func(p *cluster.Pod)) func(f *fakeCluster) {
		return func(f *fakeCluster) { p := f.pods["shop/cart-0"]; mod(&p); f.pods["shop/cart-0"] = p }
	}
	token := unverifiedToken(t, "k1", saClaims(nil))
	cases := []struct {
		name        string
		cluster     *fakeCluster
		mode        string
		clusterID   string
		wantMethod  string // "" means refused
		wantReviews int
		mention     string
	}{
		{"bound token, live objects", live(), "", "", "kube-jwt", 0, ""},
		{"service account deleted", with(func(f *fakeCluster) { delete(f.sas, "shop/cart") }), "", "", "", 0, "service account shop/cart no longer exists"},
		{"service account recreated", with(func(f *fakeCluster) { f.sas["shop/cart"] = "sa-2" }), "", "", "", 0, "deleted and recreated"},
		{"pod deleted", with(func(f *fakeCluster) { delete(f.pods, "shop/cart-0") }), "", "", "", 0, "pod shop/cart-0 it is bound to no longer exists"},
		{"pod recreated", with(func(f *fakeCluster) { p := f.pods["shop/cart-0"]; p.UID = "pod-2"; f.pods["shop/cart-0"] = p }), "", "", "", 0, "deleted and recreated"},
		{"pod on another node", with(func(f *fakeCluster) { p := f.pods["shop/cart-0"]; p.Node = "node-b"; f.pods["shop/cart-0"] = p }), "", "", "", 0, "node node-b"},
		{"pod being deleted (a finalizer holds it)", with(pod(func(p *cluster.Pod) { p.Deleting = true })), "", "", "", 0, "pod shop/cart-0 it is bound to is being deleted"},
		{"pod finished", with(pod(func(p *cluster.Pod) { p.Terminated = true })), "", "", "", 0, "pod shop/cart-0 it is bound to has finished"},
		{"reviewed token of a pod being deleted", with(func(f *fakeCluster) {
			f.claims.SecretName = "cart-token"
			p := f.pods["shop/cart-0"]
			p.Deleting = true
			f.pods["shop/cart-0"] = p
			f.reviewPod = &p
		}), "", "", "", 1, "is being deleted"},
		{"reviewed token of a pod the view does not know yet", with(func(f *fakeCluster) {
			f.claims.SecretName = "cart-token"
			f.reviewPod = &cluster.Pod{Name: "cart-1", UID: "pod-9"}
		}), "", "", "kube-tokenreview", 1, ""},
		{"node-bound token: TokenReview", with(func(f *fakeCluster) { f.claims.PodName, f.claims.PodUID = "", "" }), "", "", "kube-tokenreview", 1, ""},
		{"pod runs as another service account", with(func(f *fakeCluster) {
			p := f.pods["shop/cart-0"]
			p.ServiceAccount = "admin"
			f.pods["shop/cart-0"] = p
		}), "", "", "", 0, "runs as admin"},
		{"bad signature is refused without asking", with(func(f *fakeCluster) { f.claimErr = fmt.Errorf("%w: jwt: signature not valid", authn.ErrDenied) }), "", "", "", 0, "signature"},
		{"caches not synced: TokenReview", with(func(f *fakeCluster) { f.synced = false }), "", "", "kube-tokenreview", 1, ""},
		{"keys not fetched yet: TokenReview", with(func(f *fakeCluster) { f.claimErr = cluster.ErrNotReady }), "", "", "kube-tokenreview", 1, ""},
		{"key set unreachable: TokenReview", with(func(f *fakeCluster) { f.claimErr = fmt.Errorf("%w: no keys", authn.ErrUnavailable) }), "", "", "kube-tokenreview", 1, ""},
		{"a key not seen yet: TokenReview", with(func(f *fakeCluster) { f.claimErr = fmt.Errorf("%w: %w", authn.ErrDenied, jwks.ErrUnknownKey) }), "", "", "kube-tokenreview", 1, ""},
		{"legacy token without bound objects: TokenReview", with(func(f *fakeCluster) { f.claims.Bound = false }), "", "", "kube-tokenreview", 1, ""},
		{"secret-bound token: TokenReview", with(func(f *fakeCluster) { f.claims.SecretName = "cart-token" }), "", "", "kube-tokenreview", 1, ""},
		{"tokenreview mode asks every time", live(), TokenReview, "", "kube-tokenreview", 1, ""},
		{"unknown cluster", live(), "", "west", "", 0, `unknown cluster "west"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, err := NewForClusters(Config{Clusters: fakeClusters{"east": tc.cluster}, Verification: tc.mode, TrustDomain: td})
			if err != nil {
				t.Fatal(err)
			}
			id, err := a.Authenticate(context.Background(), &authn.Request{BearerToken: token, ClusterID: tc.clusterID})
			if tc.cluster.reviews != tc.wantReviews {
				t.Errorf("%d TokenReviews, want %d", tc.cluster.reviews, tc.wantReviews)
			}
			if tc.wantMethod == "" {
				// A cluster it does not serve is not its credential to
				// judge (the chain refuses it when nobody claims it).
				want := authn.ErrDenied
				if strings.HasPrefix(tc.mention, "unknown cluster") {
					want = authn.ErrNoCredential
				}
				if !errors.Is(err, want) || !strings.Contains(err.Error(), tc.mention) {
					t.Fatalf("err = %v, want a refusal mentioning %q", err, tc.mention)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.Method != tc.wantMethod || id.ID.String() != "spiffe://cluster.local/ns/shop/sa/cart" || id.Cluster != "east" {
				t.Fatalf("identity %+v", id)
			}
			if tc.wantMethod == "kube-jwt" && (id.PodName != "cart-0" || id.PodUID != "pod-1" || id.NodeName != "node-a" || id.ServiceAccountUID != "sa-1") {
				t.Fatalf("identity lacks the bound objects: %+v", id)
			}
		})
	}
}
