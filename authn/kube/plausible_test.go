package kube

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/meshca/broker/authn"
)

const testIssuer = "https://kubernetes.default.svc.cluster.local"

// unverifiedToken signs claims with a throwaway key: the shape of a
// service-account token, trusted by nobody.
func unverifiedToken(t testing.TB, kid string, claims map[string]any) string {
	t.Helper()
	tok, err := signWithThrowawayKey(kid, claims)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func signWithThrowawayKey(kid string, claims map[string]any) (string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader(jose.HeaderKey("kid"), kid)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, opts)
	if err != nil {
		return "", err
	}
	return jwt.Signed(s).Claims(claims).Serialize()
}

// saClaims are the claims of a projected token for the istio-ca audience.
func saClaims(mod func(map[string]any)) map[string]any {
	c := map[string]any{
		"iss": testIssuer,
		"aud": []string{DefaultAudience},
		"sub": "system:serviceaccount:shop:cart",
		"exp": time.Now().Add(time.Hour).Unix(),
		"iat": time.Now().Unix(),
	}
	if mod != nil {
		mod(c)
	}
	return c
}

func TestOnlyPlausibleTokensAreReviewed(t *testing.T) {
	b64 := base64.RawURLEncoding.EncodeToString
	cases := []struct {
		name    string
		token   string
		issuer  string // the cluster's, "" while unknown
		mention string // "" means reviewed
	}{
		{"projected token for istio-ca", unverifiedToken(t, "k1", saClaims(nil)), testIssuer, ""},
		{"issuer not known yet: not checked", unverifiedToken(t, "k1", saClaims(func(c map[string]any) { c["iss"] = "https://elsewhere" })), "", ""},
		{"not a JWT", "header.payload.signature", testIssuer, "not a compact JWS"},
		{"unsigned (alg none)", b64([]byte(`{"alg":"none"}`)) + "." + b64([]byte(`{}`)) + ".", testIssuer, "not a compact JWS"},
		{"claims not JSON", b64([]byte(`{"alg":"ES256"}`)) + "." + b64([]byte(`not json`)) + "." + b64([]byte("sig")), testIssuer, "not a JSON object"},
		{"another issuer", unverifiedToken(t, "k1", saClaims(func(c map[string]any) { c["iss"] = "https://elsewhere" })), testIssuer, `issuer "https://elsewhere"`},
		{"another audience", unverifiedToken(t, "k1", saClaims(func(c map[string]any) { c["aud"] = []string{"https://kubernetes.default.svc"} })), testIssuer, "do not include any of"},
		{"no audience", unverifiedToken(t, "k1", saClaims(func(c map[string]any) { delete(c, "aud") })), testIssuer, "do not include any of"},
		{"no expiry (legacy)", unverifiedToken(t, "k1", saClaims(func(c map[string]any) { delete(c, "exp") })), testIssuer, "no expiry"},
		{"expired", unverifiedToken(t, "k1", saClaims(func(c map[string]any) { c["exp"] = time.Now().Add(-time.Hour).Unix() })), testIssuer, "expired at"},
	}
	for _, mode := range []string{Local, TokenReview} {
		for _, tc := range cases {
			t.Run(mode+"/"+tc.name, func(t *testing.T) {
				// Local mode, not synced: everything would go to TokenReview.
				f := &fakeCluster{issuer: tc.issuer}
				a, err := NewForClusters(Config{Clusters: fakeClusters{"east": f}, Verification: mode, TrustDomain: td})
				if err != nil {
					t.Fatal(err)
				}
				_, err = a.Authenticate(context.Background(), &authn.Request{BearerToken: tc.token})
				if tc.mention == "" {
					if err != nil || f.reviews != 1 {
						t.Fatalf("err = %v after %d reviews, want one review accepting it", err, f.reviews)
					}
					return
				}
				if !errors.Is(err, authn.ErrDenied) || !strings.Contains(err.Error(), tc.mention) || f.reviews != 0 {
					t.Fatalf("err = %v after %d reviews, want a refusal mentioning %q and no review", err, f.reviews, tc.mention)
				}
			})
		}
	}
}

func TestUnknownKeyFallbacksAreBoundedPerCluster(t *testing.T) {
	const burst = 5
	unknown := errors.Join(authn.ErrDenied, errUnknownKeyForTest)
	east := &fakeCluster{synced: true, issuer: testIssuer, claimErr: unknown}
	west := &fakeCluster{synced: true, issuer: testIssuer, claimErr: unknown}
	a, err := NewForClusters(Config{Clusters: fakeClusters{"east": east, "west": west}, TrustDomain: td,
		UnknownKeyRate: 0.001, UnknownKeyBurst: burst})
	if err != nil {
		t.Fatal(err)
	}
	tok := unverifiedToken(t, "made-up", saClaims(nil))
	refused := 0
	for range 50 {
		_, err := a.Authenticate(context.Background(), &authn.Request{BearerToken: tok, ClusterID: "east"})
		if errors.Is(err, authn.ErrUnavailable) && strings.Contains(err.Error(), "has not seen") {
			refused++
		} else if err != nil {
			t.Fatalf("err = %v, want accepted or Unavailable", err)
		}
	}
	if east.reviews != burst || refused != 50-burst {
		t.Fatalf("%d reviews and %d refusals of 50, want %d and %d", east.reviews, refused, burst, 50-burst)
	}
	// Another cluster's budget is its own.
	if _, err := a.Authenticate(context.Background(), &authn.Request{BearerToken: tok, ClusterID: "west"}); err != nil || west.reviews != 1 {
		t.Fatalf("west: err = %v after %d reviews", err, west.reviews)
	}
	// Tokens that verify locally never touch the budget.
	east.claimErr, east.claims = nil, boundClaims()
	east.sas = map[string]string{"shop/cart": "sa-1"}
	east.pods = livePods()
	if _, err := a.Authenticate(context.Background(), &authn.Request{BearerToken: tok, ClusterID: "east"}); err != nil {
		t.Fatalf("locally verified token: %v", err)
	}
}
