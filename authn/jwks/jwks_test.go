package jwks

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/broker/authn"
)

const issuer = "https://kubernetes.default.svc.cluster.local"

var (
	td      = spiffeid.RequireTrustDomainFromString("cluster.local")
	now     = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	keyOnce sync.Once
	rsaKey  *rsa.PrivateKey
	rsaKey2 *rsa.PrivateKey
	ecKey   *ecdsa.PrivateKey
)

func keys(t testing.TB) {
	t.Helper()
	keyOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if rsaKey2, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if ecKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
	})
}

func jwksJSON(t testing.TB, ks ...jose.JSONWebKey) []byte {
	t.Helper()
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: ks})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t testing.TB, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

type kubeClaim struct {
	Namespace      string  `json:"namespace,omitempty"`
	ServiceAccount *objRef `json:"serviceaccount,omitempty"`
	Pod            *objRef `json:"pod,omitempty"`
	Node           *objRef `json:"node,omitempty"`
	Secret         *objRef `json:"secret,omitempty"`
}

// claims is what the API server puts in a TokenRequest token.
func claims(ns, sa string) (jwt.Claims, map[string]any) {
	std := jwt.Claims{
		Issuer:    issuer,
		Subject:   "system:serviceaccount:" + ns + ":" + sa,
		Audience:  jwt.Audience{"istio-ca"},
		Expiry:    jwt.NewNumericDate(now.Add(time.Hour)),
		NotBefore: jwt.NewNumericDate(now.Add(-time.Minute)),
		IssuedAt:  jwt.NewNumericDate(now.Add(-time.Minute)),
	}
	priv := map[string]any{"kubernetes.io": kubeClaim{
		Namespace:      ns,
		ServiceAccount: &objRef{Name: sa, UID: "11111111-2222-3333-4444-555555555555"},
		Pod:            &objRef{Name: "web-0", UID: "66666666-2222-3333-4444-555555555555"},
	}}
	return std, priv
}

func sign(t testing.TB, alg jose.SignatureAlgorithm, key any, kid string, std jwt.Claims, priv map[string]any) string {
	t.Helper()
	sk := jose.SigningKey{Algorithm: alg, Key: key}
	if kid != "" {
		sk.Key = jose.JSONWebKey{Key: key, KeyID: kid}
	}
	signer, err := jose.NewSigner(sk, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	b := jwt.Signed(signer).Claims(std)
	if priv != nil {
		b = b.Claims(priv)
	}
	s, err := b.Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// signWith lets a (claims, private claims) pair be passed straight from a
// helper returning both.
func signWith(t testing.TB, alg jose.SignatureAlgorithm, key any, kid string) func(jwt.Claims, map[string]any) string {
	return func(std jwt.Claims, priv map[string]any) string { return sign(t, alg, key, kid, std, priv) }
}

func unsignedToken(t testing.TB, std jwt.Claims) string {
	t.Helper()
	payload, err := json.Marshal(std)
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc(payload) + "."
}

func newAuth(t testing.TB, cfg Config) *Authenticator {
	t.Helper()
	if cfg.Issuer == "" {
		cfg.Issuer = issuer
	}
	if cfg.TrustDomain.IsZero() {
		cfg.TrustDomain = td
	}
	if cfg.Now == nil {
		cfg.Now = func() time.Time { return now }
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAuthenticate(t *testing.T) {
	keys(t)
	file := writeFile(t, "jwks.json", jwksJSON(t,
		jose.JSONWebKey{Key: &rsaKey.PublicKey, KeyID: "rsa1", Algorithm: "RS256", Use: "sig"},
		jose.JSONWebKey{Key: &ecKey.PublicKey, KeyID: "ec1", Algorithm: "ES256", Use: "sig"},
	))
	pubDER, err := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})

	mod := func(f func(*jwt.Claims, map[string]any)) (jwt.Claims, map[string]any) {
		std, priv := claims("team-a", "sa1")
		f(&std, priv)
		return std, priv
	}
	good := func() (jwt.Claims, map[string]any) { return claims("team-a", "sa1") }
	rs := func(std jwt.Claims, priv map[string]any) string {
		return sign(t, jose.RS256, rsaKey, "rsa1", std, priv)
	}

	tests := []struct {
		name     string
		token    string
		cluster  string
		cfg      Config
		wantKind error
		wantMsg  string
		wantID   string
		wantSub  string
	}{
		{name: "no token", wantKind: authn.ErrNoCredential},
		{name: "good RS256", token: rs(good()), wantID: "spiffe://cluster.local/ns/team-a/sa/sa1", wantSub: "system:serviceaccount:team-a:sa1 pod=web-0"},
		{name: "good ES256", token: signWith(t, jose.ES256, ecKey, "ec1")(mod(func(c *jwt.Claims, _ map[string]any) {})), wantID: "spiffe://cluster.local/ns/team-a/sa/sa1"},
		{name: "good without kubernetes.io claim", token: rs(mod(func(_ *jwt.Claims, p map[string]any) { delete(p, "kubernetes.io") })),
			wantID: "spiffe://cluster.local/ns/team-a/sa/sa1", wantSub: "system:serviceaccount:team-a:sa1"},
		{name: "clusterid matches", token: rs(good()), cluster: "Kubernetes", wantID: "spiffe://cluster.local/ns/team-a/sa/sa1"},
		{name: "unknown cluster", token: rs(good()), cluster: "cluster2", wantKind: authn.ErrNoCredential, wantMsg: `cluster "cluster2" is not this key set's`},
		{name: "configured cluster", token: rs(good()), cluster: "east", cfg: Config{ClusterID: "east"}, wantID: "spiffe://cluster.local/ns/team-a/sa/sa1"},
		{name: "wrong issuer", token: rs(mod(func(c *jwt.Claims, _ map[string]any) { c.Issuer = "https://evil.example" })),
			wantKind: authn.ErrDenied, wantMsg: "issuer"},
		{name: "wrong audience", token: rs(mod(func(c *jwt.Claims, _ map[string]any) { c.Audience = jwt.Audience{issuer} })),
			wantKind: authn.ErrDenied, wantMsg: "audiences"},
		{name: "one of several audiences", token: rs(mod(func(c *jwt.Claims, _ map[string]any) { c.Audience = jwt.Audience{issuer, "istio-ca"} })),
			wantID: "spiffe://cluster.local/ns/team-a/sa/sa1"},
		{name: "configured audiences", cfg: Config{Audiences: []string{"mesh-ca"}},
			token: rs(mod(func(c *jwt.Claims, _ map[string]any) { c.Audience = jwt.Audience{"mesh-ca"} })), wantID: "spiffe://cluster.local/ns/team-a/sa/sa1"},
		{name: "expired", token: rs(mod(func(c *jwt.Claims, _ map[string]any) { c.Expiry = jwt.NewNumericDate(now.Add(-time.Minute)) })),
			wantKind: authn.ErrDenied, wantMsg: "expired"},
		{name: "expired within leeway", token: rs(mod(func(c *jwt.Claims, _ map[string]any) { c.Expiry = jwt.NewNumericDate(now.Add(-10 * time.Second)) })),
			wantID: "spiffe://cluster.local/ns/team-a/sa/sa1"},
		{name: "no expiry", token: rs(mod(func(c *jwt.Claims, _ map[string]any) { c.Expiry = nil })), wantKind: authn.ErrDenied, wantMsg: "no expiry"},
		{name: "not yet valid", token: rs(mod(func(c *jwt.Claims, _ map[string]any) { c.NotBefore = jwt.NewNumericDate(now.Add(5 * time.Minute)) })),
			wantKind: authn.ErrDenied, wantMsg: "not valid before"},
		{name: "issued in the future", token: rs(mod(func(c *jwt.Claims, _ map[string]any) {
			c.IssuedAt, c.NotBefore = jwt.NewNumericDate(now.Add(5*time.Minute)), nil
		})), wantKind: authn.ErrDenied, wantMsg: "future"},
		{name: "alg none", token: unsignedToken(t, jwt.Claims{Issuer: issuer, Subject: "system:serviceaccount:a:b", Audience: jwt.Audience{"istio-ca"}}),
			wantKind: authn.ErrDenied, wantMsg: "algorithm"},
		{name: "HS256 with the public key as secret", token: signWith(t, jose.HS256, pubPEM, "rsa1")(mod(func(*jwt.Claims, map[string]any) {})),
			wantKind: authn.ErrDenied, wantMsg: "algorithm"},
		{name: "HS256 allowed by config is refused at New", cfg: Config{Algorithms: []jose.SignatureAlgorithm{jose.HS256}}},
		{name: "unknown kid", token: signWith(t, jose.RS256, rsaKey2, "rsa2")(mod(func(*jwt.Claims, map[string]any) {})),
			wantKind: authn.ErrDenied, wantMsg: `signing key "rsa2"`},
		{name: "bad signature", token: signWith(t, jose.RS256, rsaKey2, "rsa1")(mod(func(*jwt.Claims, map[string]any) {})),
			wantKind: authn.ErrDenied, wantMsg: "signature"},
		{name: "tampered payload", token: tamper(t, rs(good())), wantKind: authn.ErrDenied, wantMsg: "signature"},
		{name: "RSA key id with EC algorithm", token: signWith(t, jose.ES256, ecKey, "rsa1")(mod(func(*jwt.Claims, map[string]any) {})),
			wantKind: authn.ErrDenied, wantMsg: "signature"},
		{name: "sub not a service account", token: rs(mod(func(c *jwt.Claims, p map[string]any) { c.Subject = "alice"; delete(p, "kubernetes.io") })),
			wantKind: authn.ErrDenied, wantMsg: "not a service account"},
		{name: "kubernetes.io namespace mismatch", token: rs(mod(func(c *jwt.Claims, p map[string]any) {
			k := p["kubernetes.io"].(kubeClaim)
			k.Namespace = "team-b"
			p["kubernetes.io"] = k
		})), wantKind: authn.ErrDenied, wantMsg: "kubernetes.io claim"},
		{name: "kubernetes.io service account mismatch", token: rs(mod(func(c *jwt.Claims, p map[string]any) {
			k := p["kubernetes.io"].(kubeClaim)
			k.ServiceAccount = &objRef{Name: "admin"}
			p["kubernetes.io"] = k
		})), wantKind: authn.ErrDenied, wantMsg: "kubernetes.io claim"},
		{name: "kubernetes.io without service account", token: rs(mod(func(c *jwt.Claims, p map[string]any) {
			k := p["kubernetes.io"].(kubeClaim)
			k.ServiceAccount = nil
			p["kubernetes.io"] = k
		})), wantKind: authn.ErrDenied, wantMsg: "kubernetes.io claim"},
		{name: "bad namespace characters", token: rs(mod(func(c *jwt.Claims, p map[string]any) {
			c.Subject = "system:serviceaccount:Team_A/../x:sa1"
			delete(p, "kubernetes.io")
		})), wantKind: authn.ErrDenied, wantMsg: "namespace"},
		{name: "not a JWT", token: "not-a-jwt", wantKind: authn.ErrDenied},
		{name: "JWE-shaped", token: "a.b.c.d.e", wantKind: authn.ErrDenied},
		{name: "PEM key file, kid computed like Kubernetes", cfg: Config{File: writeFile(t, "sa.pub", pubPEM)},
			token: signWith(t, jose.RS256, rsaKey, mustKID(t, &rsaKey.PublicKey))(good()), wantID: "spiffe://cluster.local/ns/team-a/sa/sa1"},
		{name: "PEM key file, no kid", cfg: Config{File: writeFile(t, "sa.pub", pubPEM)},
			token: signWith(t, jose.RS256, rsaKey, "")(good()), wantID: "spiffe://cluster.local/ns/team-a/sa/sa1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			if cfg.File == "" {
				cfg.File = file
			}
			if cfg.Issuer == "" {
				cfg.Issuer = issuer
			}
			cfg.TrustDomain = td
			cfg.Now = func() time.Time { return now }
			a, err := New(cfg)
			if tc.token == "" && tc.wantKind == nil {
				if err == nil {
					t.Fatal("New accepted the config")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			id, err := a.Authenticate(context.Background(), &authn.Request{BearerToken: tc.token, ClusterID: tc.cluster})
			if tc.wantKind != nil {
				if !errors.Is(err, tc.wantKind) {
					t.Fatalf("err = %v, want %v", err, tc.wantKind)
				}
				if !strings.Contains(err.Error(), tc.wantMsg) {
					t.Fatalf("err = %q, want it to contain %q", err, tc.wantMsg)
				}
				t.Logf("refused: %v", err)
				if tc.token != "" && strings.Contains(err.Error(), tc.token) {
					t.Fatalf("error leaks the token: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.ID.String() != tc.wantID {
				t.Fatalf("id = %s, want %s", id.ID, tc.wantID)
			}
			if tc.wantSub != "" && id.Subject != tc.wantSub {
				t.Fatalf("subject = %q, want %q", id.Subject, tc.wantSub)
			}
			wantCluster := cfg.ClusterID
			if wantCluster == "" {
				wantCluster = DefaultClusterID
			}
			if id.Cluster != wantCluster || id.Namespace != "team-a" || id.ServiceAccount != "sa1" {
				t.Fatalf("identity = %+v", id)
			}
		})
	}
}

func mustKID(t testing.TB, k any) string {
	t.Helper()
	kid, err := kubernetesKeyID(k)
	if err != nil {
		t.Fatal(err)
	}
	return kid
}

// tamper swaps the payload for one naming another service account.
func tamper(t testing.TB, tok string) string {
	t.Helper()
	parts := strings.Split(tok, ".")
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	parts[1] = base64.RawURLEncoding.EncodeToString([]byte(strings.ReplaceAll(string(raw), "sa1", "sa2")))
	return strings.Join(parts, ".")
}

func TestParseKeysDropsNonSigningKeys(t *testing.T) {
	keys(t)
	raw := jwksJSON(t,
		jose.JSONWebKey{Key: []byte("secret-secret-secret-secret-1234"), KeyID: "oct", Algorithm: "HS256"},
		jose.JSONWebKey{Key: &rsaKey2.PublicKey, KeyID: "enc", Use: "enc"},
		jose.JSONWebKey{Key: &rsaKey.PublicKey, KeyID: "rsa1"},
	)
	ks, err := parseKeys(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(ks) != 1 || ks[0].KeyID != "rsa1" {
		t.Fatalf("kept %d keys: %+v", len(ks), ks)
	}
	if _, err := parseKeys(jwksJSON(t, jose.JSONWebKey{Key: []byte("only-a-secret-only-a-secret-1234"), KeyID: "oct"})); err == nil {
		t.Fatal("a set with only a symmetric key was accepted")
	}
	if _, err := parseKeys([]byte("{")); err == nil {
		t.Fatal("garbage accepted")
	}
}

func TestConfigValidation(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no issuer":                 {TrustDomain: td, File: "x"},
		"no trust domain":           {Issuer: issuer, File: "x"},
		"no source":                 {Issuer: issuer, TrustDomain: td},
		"two sources":               {Issuer: issuer, TrustDomain: td, File: "x", URL: "https://x"},
		"empty audience":            {Issuer: issuer, TrustDomain: td, File: "x", Audiences: []string{""}},
		"bad CA":                    {Issuer: issuer, TrustDomain: td, URL: "https://x", CAPEM: []byte("nope")},
		"none alg":                  {Issuer: issuer, TrustDomain: td, File: "x", Algorithms: []jose.SignatureAlgorithm{"none"}},
		"key age not above refresh": {Issuer: issuer, TrustDomain: td, File: "x", MaxKeyAge: time.Minute, RefreshInterval: time.Minute},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// jwksServer serves a key set over TLS, requiring a bearer token, and
// counts fetches.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	body    []byte
	status  int
	fetches atomic.Int32
}

func newJWKSServer(t *testing.T, body []byte) *jwksServer {
	s := &jwksServer{body: body, status: http.StatusOK}
	s.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		if r.Header.Get("Authorization") != "Bearer fetch-token" {
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.status != http.StatusOK {
			http.Error(w, "down", s.status)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_, _ = w.Write(s.body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(body []byte, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if body != nil {
		s.body = body
	}
	s.status = status
}

func (s *jwksServer) caPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificate().Raw})
}

func TestURLRotationAndRateLimit(t *testing.T) {
	keys(t)
	srv := newJWKSServer(t, jwksJSON(t, jose.JSONWebKey{Key: &rsaKey.PublicKey, KeyID: "rsa1"}))
	clock := now
	var clockMu sync.Mutex
	a := newAuth(t, Config{
		URL:             srv.URL + "/openid/v1/jwks",
		CAPEM:           srv.caPEM(),
		BearerTokenFile: writeFile(t, "token", []byte("fetch-token\n")),
		Now: func() time.Time {
			clockMu.Lock()
			defer clockMu.Unlock()
			return clock
		},
		MinRefreshInterval: time.Hour, // only the burst of 1 is available
	})
	advance := func(d time.Duration) {
		clockMu.Lock()
		clock = clock.Add(d)
		clockMu.Unlock()
	}
	ctx := context.Background()
	tok1 := signWith(t, jose.RS256, rsaKey, "rsa1")(claims2("a", "b"))
	if _, err := a.Authenticate(ctx, &authn.Request{BearerToken: tok1}); err != nil {
		t.Fatal(err)
	}
	if n := srv.fetches.Load(); n != 1 {
		t.Fatalf("fetches = %d, want 1", n)
	}
	// Cached: no fetch.
	if _, err := a.Authenticate(ctx, &authn.Request{BearerToken: tok1}); err != nil || srv.fetches.Load() != 1 {
		t.Fatalf("second call: %v, fetches %d", err, srv.fetches.Load())
	}

	// The issuer rotates to a new key; the limiter (burst used by the
	// first fetch, one token per hour) means the unknown kid is refused
	// without a fetch until the limit allows one.
	srv.set(jwksJSON(t, jose.JSONWebKey{Key: &rsaKey.PublicKey, KeyID: "rsa1"}, jose.JSONWebKey{Key: &rsaKey2.PublicKey, KeyID: "rsa2"}), http.StatusOK)
	tok2 := signWith(t, jose.RS256, rsaKey2, "rsa2")(claims2("a", "b"))
	if _, err := a.Authenticate(ctx, &authn.Request{BearerToken: tok2}); !errors.Is(err, authn.ErrDenied) || srv.fetches.Load() != 1 {
		t.Fatalf("rate-limited unknown kid: %v, fetches %d", err, srv.fetches.Load())
	}

	// With a fresh limiter the unknown kid triggers one fetch and succeeds.
	a.limiter.SetLimit(1000)
	a.limiter.SetBurst(1)
	time.Sleep(5 * time.Millisecond)
	if _, err := a.Authenticate(ctx, &authn.Request{BearerToken: tok2}); err != nil {
		t.Fatalf("rotated key: %v", err)
	}
	if n := srv.fetches.Load(); n != 2 {
		t.Fatalf("fetches = %d, want 2", n)
	}

	// The issuer goes down: stale keys stay in use.
	srv.set(nil, http.StatusServiceUnavailable)
	advance(DefaultRefreshInterval + time.Minute)
	time.Sleep(5 * time.Millisecond)
	if _, err := a.Authenticate(ctx, &authn.Request{BearerToken: signWith(t, jose.RS256, rsaKey, "rsa1")(claims2("a", "b"))}); err != nil {
		t.Fatalf("stale keys not used while the issuer is down: %v", err)
	}
	if err := a.Refresh(ctx); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("refresh error = %v", err)
	}
}

// claims2 is claims relative to the real clock's test time, without the
// kubernetes.io claim.
func claims2(ns, sa string) (jwt.Claims, map[string]any) {
	std, _ := claims(ns, sa)
	std.Expiry = jwt.NewNumericDate(now.Add(24 * time.Hour))
	return std, nil
}

func TestURLFailures(t *testing.T) {
	keys(t)
	tok := signWith(t, jose.RS256, rsaKey, "rsa1")(claims2("a", "b"))
	ctx := context.Background()

	// Issuer down from the start: unavailable, so the agent retries.
	srv := newJWKSServer(t, nil)
	srv.set(nil, http.StatusInternalServerError)
	a := newAuth(t, Config{URL: srv.URL, CAPEM: srv.caPEM(), BearerToken: "fetch-token"})
	if _, err := a.Authenticate(ctx, &authn.Request{BearerToken: tok}); !errors.Is(err, authn.ErrUnavailable) {
		t.Fatalf("issuer down: %v", err)
	}

	// Wrong fetch credentials.
	srv2 := newJWKSServer(t, jwksJSON(t, jose.JSONWebKey{Key: &rsaKey.PublicKey, KeyID: "rsa1"}))
	a = newAuth(t, Config{URL: srv2.URL, CAPEM: srv2.caPEM(), BearerToken: "wrong"})
	if _, err := a.Authenticate(ctx, &authn.Request{BearerToken: tok}); !errors.Is(err, authn.ErrUnavailable) || !strings.Contains(err.Error(), "401") {
		t.Fatalf("unauthorized fetch: %v", err)
	}

	// TLS not trusted.
	a = newAuth(t, Config{URL: srv2.URL, BearerToken: "fetch-token"})
	if _, err := a.Authenticate(ctx, &authn.Request{BearerToken: tok}); !errors.Is(err, authn.ErrUnavailable) {
		t.Fatalf("untrusted TLS: %v", err)
	}

	// Custom HTTP client (e.g. from a kubeconfig) is used as is.
	a = newAuth(t, Config{URL: srv2.URL, HTTPClient: &http.Client{Transport: tokenTransport{srv2.Client().Transport}}})
	if _, err := a.Authenticate(ctx, &authn.Request{BearerToken: tok}); err != nil {
		t.Fatalf("custom client: %v", err)
	}
}

type tokenTransport struct{ base http.RoundTripper }

func (t tokenTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer fetch-token")
	return t.base.RoundTrip(r)
}

func TestRunRefreshes(t *testing.T) {
	keys(t)
	srv := newJWKSServer(t, jwksJSON(t, jose.JSONWebKey{Key: &rsaKey.PublicKey, KeyID: "rsa1"}))
	a := newAuth(t, Config{URL: srv.URL, CAPEM: srv.caPEM(), BearerToken: "fetch-token", RefreshInterval: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for srv.fetches.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if srv.fetches.Load() < 3 {
		t.Fatalf("Run fetched %d times", srv.fetches.Load())
	}
}

func TestConcurrentUnknownKidCoalesces(t *testing.T) {
	keys(t)
	srv := newJWKSServer(t, jwksJSON(t, jose.JSONWebKey{Key: &rsaKey.PublicKey, KeyID: "rsa1"}))
	a := newAuth(t, Config{URL: srv.URL, CAPEM: srv.caPEM(), BearerToken: "fetch-token", MinRefreshInterval: time.Nanosecond})
	tok := signWith(t, jose.RS256, rsaKey, "rsa1")(claims2("a", "b"))
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := a.Authenticate(context.Background(), &authn.Request{BearerToken: tok}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := srv.fetches.Load(); n != 1 {
		t.Fatalf("20 concurrent first requests caused %d fetches", n)
	}
}

// fakeClock is a settable clock for key-age tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// switchableFetch serves a key set, or fails, as the test says.
type switchableFetch struct {
	mu      sync.Mutex
	body    []byte
	err     error
	fetches int
}

func (f *switchableFetch) fetch(context.Context) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fetches++
	return f.body, f.err
}

func (f *switchableFetch) set(body []byte, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if body != nil {
		f.body = body
	}
	f.err = err
}

// TestMaxKeyAge: keys are used while re-fetches fail only up to MaxKeyAge
// after their last successful fetch; then tokens are Unavailable (the
// agent retries; the cluster package asks TokenReview), until a fetch
// succeeds again.
func TestMaxKeyAge(t *testing.T) {
	keys(t)
	clock := &fakeClock{t: now}
	f := &switchableFetch{body: jwksJSON(t, jose.JSONWebKey{Key: &rsaKey.PublicKey, KeyID: "rsa1"})}
	a := newAuth(t, Config{
		Fetch: f.fetch, Source: "test issuer", Now: clock.Now,
		// Every request may fetch: the key age, not the limiter, is tested.
		MinRefreshInterval: time.Nanosecond,
	})
	if a.cfg.MaxKeyAge != DefaultMaxKeyAge || a.cfg.RefreshInterval != DefaultRefreshInterval {
		t.Fatalf("defaults: max key age %s, refresh %s", a.cfg.MaxKeyAge, a.cfg.RefreshInterval)
	}
	tok := signWith(t, jose.RS256, rsaKey, "rsa1")(claims2("a", "b"))
	down := errors.New("issuer unreachable")
	steps := []struct {
		name     string
		advance  time.Duration
		fetchErr error
		wantKind error
		wantMsg  string
	}{
		{name: "fresh keys", wantKind: nil},
		{name: "issuer down, keys past the refresh interval", advance: 6 * time.Minute, fetchErr: down},
		{name: "issuer down, just within the bound", advance: 4 * time.Minute, fetchErr: down},
		{name: "issuer down, past the bound", advance: time.Second, fetchErr: down, wantKind: authn.ErrUnavailable,
			wantMsg: "could not be refreshed since 2026-11-22T12:00:00Z (10m1s ago; keys are used at most 10m0s after their last fetch): key set from test issuer: issuer unreachable"},
		{name: "still down", advance: time.Hour, fetchErr: down, wantKind: authn.ErrUnavailable, wantMsg: "since 2026-11-22T12:00:00Z"},
		{name: "issuer back", advance: time.Second},
		{name: "down again, within the bound of the new fetch", advance: 9 * time.Minute, fetchErr: down},
		{name: "down again, past it", advance: 2 * time.Minute, fetchErr: down, wantKind: authn.ErrUnavailable, wantMsg: "since 2026-11-22T13:10:02Z"},
	}
	for _, st := range steps {
		clock.Advance(st.advance)
		f.set(nil, st.fetchErr)
		_, err := a.Authenticate(context.Background(), &authn.Request{BearerToken: tok})
		switch {
		case st.wantKind == nil && err != nil:
			t.Fatalf("%s: %v", st.name, err)
		case st.wantKind != nil && (!errors.Is(err, st.wantKind) || errors.Is(err, authn.ErrDenied) || !strings.Contains(err.Error(), st.wantMsg)):
			t.Fatalf("%s: err = %v, want %v mentioning %q", st.name, err, st.wantKind, st.wantMsg)
		}
		t.Logf("%s: %v", st.name, err)
	}
	// VerifyToken, which the cluster package uses, is bound the same way.
	clock.Advance(time.Hour)
	if _, err := a.VerifyToken(context.Background(), tok); !errors.Is(err, authn.ErrUnavailable) {
		t.Fatalf("VerifyToken with keys an hour past the bound: %v", err)
	}
}

// TestWithdrawnKeyIsNotTrusted: a signing key removed from the set (after
// a compromise) is refused as soon as the set is re-fetched.
func TestWithdrawnKeyIsNotTrusted(t *testing.T) {
	keys(t)
	both := jwksJSON(t, jose.JSONWebKey{Key: &rsaKey.PublicKey, KeyID: "rsa1"}, jose.JSONWebKey{Key: &rsaKey2.PublicKey, KeyID: "rsa2"})
	f := &switchableFetch{body: both}
	a := newAuth(t, Config{Fetch: f.fetch})
	ctx := context.Background()
	leaked := signWith(t, jose.RS256, rsaKey2, "rsa2")(claims2("a", "b"))
	leakedNoKID := signWith(t, jose.RS256, rsaKey2, "")(claims2("a", "b"))
	for _, tok := range []string{leaked, leakedNoKID} {
		if _, err := a.Authenticate(ctx, &authn.Request{BearerToken: tok}); err != nil {
			t.Fatalf("before the withdrawal: %v", err)
		}
	}
	f.set(jwksJSON(t, jose.JSONWebKey{Key: &rsaKey.PublicKey, KeyID: "rsa1"}), nil)
	if err := a.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, token string
		wantUnknown bool
	}{
		{"by key id", leaked, true},
		{"without key id", leakedNoKID, false},
	} {
		_, err := a.Authenticate(ctx, &authn.Request{BearerToken: tc.token})
		if !errors.Is(err, authn.ErrDenied) || errors.Is(err, ErrUnknownKey) != tc.wantUnknown {
			t.Fatalf("%s: withdrawn key still trusted or wrongly refused: %v", tc.name, err)
		}
		t.Logf("%s: refused: %v", tc.name, err)
	}
	if _, err := a.Authenticate(ctx, &authn.Request{BearerToken: signWith(t, jose.RS256, rsaKey, "rsa1")(claims2("a", "b"))}); err != nil {
		t.Fatalf("the remaining key: %v", err)
	}
}

// TestScope: a configured key set refuses what only a cluster check can
// judge (tokens bound to Kubernetes objects, unless allowed) and tokens
// of an issuer a served cluster owns.
func TestScope(t *testing.T) {
	keys(t)
	file := writeFile(t, "jwks.json", jwksJSON(t, jose.JSONWebKey{Key: &rsaKey.PublicKey, KeyID: "rsa1"}))
	tokenWith := func(f func(k *kubeClaim)) string {
		std, priv := claims("team-a", "sa1")
		k := priv["kubernetes.io"].(kubeClaim)
		k.Pod = nil
		if f != nil {
			f(&k)
		}
		priv["kubernetes.io"] = k
		return sign(t, jose.RS256, rsaKey, "rsa1", std, priv)
	}
	saOnly := tokenWith(nil)
	podBound := tokenWith(func(k *kubeClaim) {
		k.Pod = &objRef{Name: "web-0", UID: "66666666-2222-3333-4444-555555555555"}
		k.Node = &objRef{Name: "node-1", UID: "77777777-2222-3333-4444-555555555555"}
	})
	secretBound := tokenWith(func(k *kubeClaim) { k.Secret = &objRef{Name: "s1", UID: "88888888-2222-3333-4444-555555555555"} })
	nodeBound := tokenWith(func(k *kubeClaim) { k.Node = &objRef{Name: "node-1", UID: "77777777-2222-3333-4444-555555555555"} })
	noKubeClaim := sign(t, jose.RS256, rsaKey, "rsa1", func() jwt.Claims { std, _ := claims("team-a", "sa1"); return std }(), nil)

	servedBy := func(id string, err error) func(string) (string, error) {
		return func(iss string) (string, error) {
			if iss != issuer {
				t.Errorf("ServedBy asked about %q", iss)
			}
			return id, err
		}
	}
	tests := []struct {
		name     string
		cfg      Config
		token    string
		wantKind error
		wantMsg  string
	}{
		{name: "pod-bound, no refusal configured (the cluster package's use)", token: podBound},
		{name: "pod-bound refused", cfg: Config{RefuseKubernetesBound: true}, token: podBound, wantKind: authn.ErrDenied, wantMsg: "bound to Kubernetes pod web-0, node node-1"},
		{name: "secret-bound refused", cfg: Config{RefuseKubernetesBound: true}, token: secretBound, wantKind: authn.ErrDenied, wantMsg: "secret s1"},
		{name: "node-bound refused", cfg: Config{RefuseKubernetesBound: true}, token: nodeBound, wantKind: authn.ErrDenied, wantMsg: "node node-1"},
		{name: "service account only is not bound to an object", cfg: Config{RefuseKubernetesBound: true}, token: saOnly},
		{name: "no kubernetes.io claim", cfg: Config{RefuseKubernetesBound: true}, token: noKubeClaim},
		{name: "issuer not served", cfg: Config{RefuseKubernetesBound: true, ServedBy: servedBy("", nil)}, token: saOnly},
		{name: "issuer served by a registry cluster", cfg: Config{ClusterID: "vms", ServedBy: servedBy("east", nil)}, token: saOnly,
			wantKind: authn.ErrDenied, wantMsg: `issuer https://kubernetes.default.svc.cluster.local is cluster "east"'s`},
		{name: "registry cannot tell yet, bound tokens allowed", cfg: Config{ServedBy: servedBy("", errors.New("cluster west's issuer not known yet"))}, token: saOnly,
			wantKind: authn.ErrUnavailable, wantMsg: "cluster west's issuer not known yet"},
		{name: "registry cannot tell yet, bound tokens refused: an unbound one passes", cfg: Config{RefuseKubernetesBound: true, ServedBy: servedBy("", errors.New("cluster west's issuer not known yet"))}, token: saOnly},
		{name: "registry cannot tell yet, bound tokens refused: a bound one is refused", cfg: Config{RefuseKubernetesBound: true, ServedBy: servedBy("", errors.New("cluster west's issuer not known yet"))}, token: podBound,
			wantKind: authn.ErrDenied, wantMsg: "bound to Kubernetes pod"},
		{name: "a bad token is refused before the registry is asked", cfg: Config{ServedBy: servedBy("", errors.New("unknown"))}, token: tamper(t, saOnly),
			wantKind: authn.ErrDenied, wantMsg: "signature"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.File = file
			a := newAuth(t, cfg)
			id, err := a.Authenticate(context.Background(), &authn.Request{BearerToken: tc.token})
			if tc.wantKind == nil {
				if err != nil || id == nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.wantKind) || (tc.wantKind == authn.ErrUnavailable && errors.Is(err, authn.ErrDenied)) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("err = %v, want %v mentioning %q", err, tc.wantKind, tc.wantMsg)
			}
			t.Logf("refused: %v", err)
			// VerifyToken, the cluster package's entry, judges only the
			// token: the live-object check after it decides the rest.
			if tc.wantMsg != "signature" {
				if _, err := a.VerifyToken(context.Background(), tc.token); err != nil {
					t.Fatalf("VerifyToken: %v", err)
				}
			}
		})
	}
}

// BenchmarkVerifyToken is one service-account token as the API server
// mints it (RS256, the usual Kubernetes key), verified locally.
func BenchmarkVerifyToken(b *testing.B) {
	keys(b)
	file := writeFile(b, "jwks.json", jwksJSON(b, jose.JSONWebKey{Key: &rsaKey.PublicKey, KeyID: "rsa1", Algorithm: "RS256", Use: "sig"}))
	a := newAuth(b, Config{File: file})
	tok := signWith(b, jose.RS256, rsaKey, "rsa1")(claims("shop", "cart"))
	ctx := context.Background()
	for b.Loop() {
		if _, err := a.VerifyToken(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}
