package jwks_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/broker/authn"
	"github.com/meshca/broker/authn/jwks"
	"github.com/meshca/broker/authn/kube"
	"github.com/meshca/broker/integration/testenv"
)

// TestAgainstKubeAPIServer verifies real TokenRequest tokens with keys
// fetched from a real API server's /openid/v1/jwks, and with its public key
// file, and shows the documented limit of local verification next to
// TokenReview.
func TestAgainstKubeAPIServer(t *testing.T) {
	k := testenv.StartKube(t, testenv.KubeName("jwks"))
	const ns, sa = "shop", "cart"
	const cartID = "spiffe://cluster.local/ns/shop/sa/cart"
	k.CreateNamespace(t, ns)
	k.CreateServiceAccount(t, ns, sa)
	k.CreatePod(t, ns, "cart-0", sa)
	td := spiffeid.RequireTrustDomainFromString("cluster.local")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	token := func(aud []string, pod string) string {
		t.Helper()
		tok, err := k.Token(ctx, ns, sa, aud, 10*time.Minute, pod)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}

	// The broker fetches the key set as a service account, the way it
	// would in a remote cluster (system:service-account-issuer-discovery
	// lets every service account read it).
	k.CreateNamespace(t, "meshca-system")
	k.CreateServiceAccount(t, "meshca-system", "broker")
	fetchToken, err := k.Token(ctx, "meshca-system", "broker", []string{k.Issuer}, time.Hour, "")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	caFile := filepath.Join(dir, "ca.crt")
	keyFile := filepath.Join(dir, "sa.pub")
	for name, b := range map[string][]byte{tokenFile: []byte(fetchToken), caFile: k.CAPEM, keyFile: k.ServiceAccountPublicKeyPEM} {
		if err := os.WriteFile(name, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	byURL, err := jwks.New(jwks.Config{
		Issuer:          k.Issuer,
		URL:             k.URL + "/openid/v1/jwks",
		CAFile:          caFile,
		BearerTokenFile: tokenFile,
		TrustDomain:     td,
	})
	if err != nil {
		t.Fatal(err)
	}
	byFile, err := jwks.New(jwks.Config{Issuer: k.Issuer, File: keyFile, TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	if err := byURL.Refresh(ctx); err != nil {
		t.Fatalf("fetching the JWKS from the API server: %v", err)
	}

	good := token([]string{"istio-ca"}, "")
	bound := token([]string{"istio-ca"}, "cart-0")
	for name, a := range map[string]*jwks.Authenticator{"url": byURL, "file": byFile} {
		t.Run(name, func(t *testing.T) {
			for _, tc := range []struct {
				name, token, cluster, wantSubject string
				wantKind                          error
			}{
				{name: "good", token: good, wantSubject: "system:serviceaccount:shop:cart"},
				{name: "pod-bound", token: bound, cluster: "Kubernetes", wantSubject: "system:serviceaccount:shop:cart pod=cart-0"},
				{name: "wrong audience", token: token([]string{"vault"}, ""), wantKind: authn.ErrDenied},
				// Not this key set's cluster: left to another authenticator.
				{name: "other cluster", token: good, cluster: "west", wantKind: authn.ErrNoCredential},
			} {
				id, err := a.Authenticate(ctx, &authn.Request{BearerToken: tc.token, ClusterID: tc.cluster})
				if tc.wantKind != nil {
					if !errors.Is(err, tc.wantKind) {
						t.Fatalf("%s: err = %v, want %v", tc.name, err, tc.wantKind)
					}
					t.Logf("%s: refused: %v", tc.name, err)
					continue
				}
				if err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
				if id.ID.String() != cartID || id.Subject != tc.wantSubject || id.Cluster != "Kubernetes" {
					t.Fatalf("%s: identity %+v", tc.name, id)
				}
			}
		})
	}

	// The documented limit: after the pod is deleted, TokenReview refuses
	// its bound token but local verification cannot know.
	review, err := kube.NewWithReviewer(kube.Config{TrustDomain: td}, kube.ClientReviewer{Client: k.Client})
	if err != nil {
		t.Fatal(err)
	}
	k.DeletePod(t, ns, "cart-0")
	// The API server sees the deletion through its own caches, and may
	// answer from its 10s cache of successful reviews: ask until it
	// refuses, for longer than that.
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		_, err := review.Authenticate(ctx, &authn.Request{BearerToken: bound})
		if errors.Is(err, authn.ErrDenied) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("TokenReview 15s after pod deletion: %v", err)
		}
	}
	if _, err := byURL.Authenticate(ctx, &authn.Request{BearerToken: bound}); err != nil {
		t.Fatalf("local verification is expected to accept a deleted pod's token until it expires: %v", err)
	}
	// Which is why a configured key set (authn.jwks, without
	// allowKubernetesBoundTokens) refuses bound tokens outright.
	refusing, err := jwks.New(jwks.Config{Issuer: k.Issuer, File: keyFile, TrustDomain: td, RefuseKubernetesBound: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := refusing.Authenticate(ctx, &authn.Request{BearerToken: bound}); !errors.Is(err, authn.ErrDenied) || !strings.Contains(err.Error(), "bound to Kubernetes pod cart-0") {
		t.Fatalf("a key set refusing bound tokens, the deleted pod's token: %v", err)
	}
	if _, err := refusing.Authenticate(ctx, &authn.Request{BearerToken: good}); err != nil {
		t.Fatalf("a key set refusing bound tokens, an unbound token: %v", err)
	}

	// A wrong fetch credential is reported as an unavailable authority.
	if err := os.WriteFile(tokenFile, []byte("not-a-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := byURL.Refresh(ctx); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("refresh with a bad token: %v", err)
	}
}
