// Package jwks authenticates Istio agents by verifying their Kubernetes
// service-account token locally, against the issuer's JSON Web Key Set,
// without asking the API server.
//
// Configured (authn.jwks), it serves callers outside every cluster the
// broker checks against live objects: a VM fleet's or CI system's issuer
// of service-account-shaped tokens, or a cluster whose API server the
// broker cannot reach. Package cluster uses it for the first step of its
// own checks of a served cluster's tokens.
//
// The price: local verification sees only the token. A pod-bound token
// stays valid here until it expires even after its pod is deleted, and a
// deleted service account is not noticed; only TokenReview (package
// authn/kube) can refuse those. Keep token lifetimes short when using it.
// For that reason a configured key set can refuse tokens bound to
// Kubernetes objects (RefuseKubernetesBound) and tokens of an issuer a
// served cluster owns (ServedBy): those belong to the cluster check.
//
// Keys are used at most MaxKeyAge after their last successful fetch, so a
// key the issuer withdrew stops being trusted even while its key set
// cannot be re-read.
package jwks

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"

	"github.com/meshca/broker/authn"
)

const (
	// DefaultClusterID is Istio's default cluster name.
	DefaultClusterID = "Kubernetes"
	// DefaultAudience is the audience Istio agents request for their CA token.
	DefaultAudience = "istio-ca"
	// DefaultRefreshInterval is how old the key set may get before it is
	// fetched again; Kubernetes rotates signing keys rarely and announces
	// new ones before use, and unknown key ids trigger a fetch anyway.
	DefaultRefreshInterval = 5 * time.Minute
	// DefaultMinRefreshInterval limits fetches caused by tokens with
	// unknown key ids, so garbage tokens cannot make the broker hammer the
	// issuer. Within it an unknown kid is refused from the cached set, so
	// publish a new key in the JWKS before signing with it (the usual
	// Kubernetes rotation) or expect refusals for up to this long.
	DefaultMinRefreshInterval = 10 * time.Second
	// DefaultLeeway absorbs clock skew between the issuer and the broker.
	DefaultLeeway = 30 * time.Second
	// DefaultFetchTimeout bounds one key-set fetch.
	DefaultFetchTimeout = 10 * time.Second
	// DefaultMaxKeyAge is how long after their last successful fetch keys
	// are still used: a key the issuer withdrew (after a compromise) stays
	// trusted at most this long while its key set cannot be re-read.
	DefaultMaxKeyAge = 10 * time.Minute

	maxTokenBytes = 64 << 10
	maxJWKSBytes  = 1 << 20
)

// ErrUnknownKey marks a refusal because the token's key ID is not in the
// key set (yet): a caller that can ask the issuer otherwise may.
var ErrUnknownKey = errors.New("unknown signing key")

// DefaultAlgorithms are the signature algorithms Kubernetes signs
// service-account tokens with (RSA and ECDSA keys; PS* for external
// signers). HMAC and "none" are never accepted.
var DefaultAlgorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512,
	jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512,
}

// Config configures an Authenticator. Exactly one of File and URL names
// the key set.
type Config struct {
	// ClusterID is the cluster whose tokens this authenticator verifies;
	// requests naming another cluster are refused. Default DefaultClusterID.
	ClusterID string
	// Issuer must equal the token's iss (the API server's
	// --service-account-issuer). Required.
	Issuer string
	// Audiences: the token's aud must contain one of them. Default
	// [DefaultAudience].
	Audiences []string
	// TrustDomain is the trust domain of the identities issued. Required.
	TrustDomain spiffeid.TrustDomain

	// File is a JWKS document, or PEM public keys (the API server's
	// --service-account-key-file), re-read on every refresh so a rotated
	// file is picked up.
	File string
	// URL is where the JWKS is fetched: the issuer's jwks_uri.
	URL string
	// CAFile / CAPEM verify URL's TLS certificate (default: system roots).
	CAFile string
	CAPEM  []byte
	// BearerTokenFile (re-read on every fetch, for rotating projected
	// tokens) or BearerToken authenticate the fetch; the API server's
	// JWKS endpoint needs one unless anonymous discovery is enabled.
	BearerTokenFile string
	BearerToken     string
	// HTTPClient, if set, is used for URL as is (CA and bearer token
	// fields are then ignored), e.g. rest.HTTPClientFor(kubeconfig).
	HTTPClient *http.Client
	// Fetch, instead of File or URL, returns the key set (e.g. through a
	// cluster's client); Source names it in messages.
	Fetch  func(ctx context.Context) ([]byte, error)
	Source string

	// Algorithms allowed in the token header. Default DefaultAlgorithms.
	Algorithms []jose.SignatureAlgorithm
	// Leeway for exp, nbf and iat. Default DefaultLeeway.
	Leeway time.Duration
	// RefreshInterval, MinRefreshInterval, FetchTimeout: see the defaults.
	// RefreshInterval defaults to the smaller of DefaultRefreshInterval
	// and half of MaxKeyAge.
	RefreshInterval    time.Duration
	MinRefreshInterval time.Duration
	FetchTimeout       time.Duration
	// MaxKeyAge bounds how long after the last successful fetch the keys
	// are used; past it, while re-fetches fail, tokens are refused as
	// authn.ErrUnavailable (retryable). Default DefaultMaxKeyAge; it must
	// exceed RefreshInterval.
	MaxKeyAge time.Duration

	// RefuseKubernetesBound refuses tokens bound to a Kubernetes object
	// (the kubernetes.io claim names a pod, secret or node) as
	// authn.ErrDenied. Local verification sees no live objects, so such a
	// token stays good here after its pod is deleted; a caller that checks
	// the objects itself (package cluster) leaves it off.
	RefuseKubernetesBound bool
	// ServedBy, if set, names the cluster of the broker's live registry
	// whose service-account tokens come from issuer ("" for none), so that
	// this key set never becomes a second, laxer way in for a cluster the
	// broker checks against live objects: such tokens are refused as
	// authn.ErrDenied. An error (the registry cannot tell yet) refuses
	// them as authn.ErrUnavailable when bound tokens are allowed; with
	// RefuseKubernetesBound, unbound tokens are accepted meanwhile.
	ServedBy func(issuer string) (clusterID string, err error)

	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Authenticator implements authn.Authenticator by local JWT verification.
type Authenticator struct {
	cfg     Config
	fetch   func(ctx context.Context) ([]byte, error)
	limiter *rate.Limiter

	// fetchMu serialises fetches so a burst of requests with an unknown
	// kid causes one fetch, not one each.
	fetchMu sync.Mutex

	mu        sync.RWMutex
	keys      []jose.JSONWebKey
	fetchedAt time.Time
	gen       uint64
	lastErr   error
}

var _ authn.Authenticator = (*Authenticator)(nil)

// New validates cfg and prepares the key source. Keys are fetched on first
// use (or by Run); New does no I/O so the broker can start while the
// issuer is unreachable.
func New(cfg Config) (*Authenticator, error) {
	if cfg.Issuer == "" {
		return nil, errors.New("jwks authenticator: issuer is required")
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("jwks authenticator: trust domain is required")
	}
	sources := 0
	for _, set := range []bool{cfg.File != "", cfg.URL != "", cfg.Fetch != nil} {
		if set {
			sources++
		}
	}
	if sources != 1 {
		return nil, errors.New("jwks authenticator: set exactly one of file and url")
	}
	if cfg.ClusterID == "" {
		cfg.ClusterID = DefaultClusterID
	}
	cfg.Audiences = slices.Clone(cfg.Audiences)
	if len(cfg.Audiences) == 0 {
		cfg.Audiences = []string{DefaultAudience}
	}
	if slices.Contains(cfg.Audiences, "") {
		return nil, errors.New("jwks authenticator: empty audience")
	}
	if len(cfg.Algorithms) == 0 {
		cfg.Algorithms = DefaultAlgorithms
	}
	for _, alg := range cfg.Algorithms {
		if !slices.Contains(DefaultAlgorithms, alg) {
			return nil, fmt.Errorf("jwks authenticator: algorithm %s is not allowed (only asymmetric signatures)", alg)
		}
	}
	if cfg.Leeway <= 0 {
		cfg.Leeway = DefaultLeeway
	}
	if cfg.MaxKeyAge <= 0 {
		cfg.MaxKeyAge = DefaultMaxKeyAge
	}
	if cfg.RefreshInterval <= 0 {
		// At least one routine refresh, and a retry, within the key age.
		cfg.RefreshInterval = min(DefaultRefreshInterval, cfg.MaxKeyAge/2)
	}
	if cfg.MaxKeyAge <= cfg.RefreshInterval {
		return nil, fmt.Errorf("jwks authenticator: max key age %s is not above the refresh interval %s", cfg.MaxKeyAge, cfg.RefreshInterval)
	}
	if cfg.MinRefreshInterval <= 0 {
		cfg.MinRefreshInterval = DefaultMinRefreshInterval
	}
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = DefaultFetchTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	a := &Authenticator{cfg: cfg, limiter: rate.NewLimiter(rate.Every(cfg.MinRefreshInterval), 1)}
	switch {
	case cfg.Fetch != nil:
		a.fetch = cfg.Fetch
	case cfg.File != "":
		path := cfg.File
		a.fetch = func(context.Context) ([]byte, error) { return os.ReadFile(path) }
	default:
		f, err := newHTTPFetcher(cfg)
		if err != nil {
			return nil, err
		}
		a.fetch = f
	}
	return a, nil
}

func newHTTPFetcher(cfg Config) (func(ctx context.Context) ([]byte, error), error) {
	client := cfg.HTTPClient
	if client == nil {
		tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
		caPEM := cfg.CAPEM
		if cfg.CAFile != "" {
			b, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("jwks authenticator: CA bundle: %w", err)
			}
			caPEM = append(slices.Clone(caPEM), b...)
		}
		if len(caPEM) > 0 {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(caPEM) {
				return nil, errors.New("jwks authenticator: CA bundle holds no PEM certificate")
			}
			tlsCfg.RootCAs = pool
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = tlsCfg
		client = &http.Client{Transport: tr}
	}
	url, tokenFile, staticToken := cfg.URL, cfg.BearerTokenFile, cfg.BearerToken
	useToken := cfg.HTTPClient == nil
	return func(ctx context.Context) ([]byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Accept", "application/jwk-set+json, application/json")
		if useToken {
			tok := staticToken
			if tokenFile != "" {
				b, err := os.ReadFile(tokenFile)
				if err != nil {
					return nil, fmt.Errorf("bearer token: %w", err)
				}
				tok = strings.TrimSpace(string(b))
			}
			if tok != "" {
				req.Header.Set("Authorization", "Bearer "+tok)
			}
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			snippet := string(body)
			if len(snippet) > 200 {
				snippet = snippet[:200]
			}
			return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(snippet))
		}
		if len(body) > maxJWKSBytes {
			return nil, fmt.Errorf("GET %s: key set larger than %d bytes", url, maxJWKSBytes)
		}
		return body, nil
	}, nil
}

// Name implements authn.Authenticator.
func (a *Authenticator) Name() string { return "jwks" }

// Run refreshes the key set every RefreshInterval until ctx ends, so
// requests rarely wait for a fetch. Optional: without it keys are fetched
// on demand.
func (a *Authenticator) Run(ctx context.Context) {
	t := time.NewTicker(a.cfg.RefreshInterval)
	defer t.Stop()
	for {
		_ = a.Refresh(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Refresh fetches the key set now. On failure the previous keys stay in
// use.
func (a *Authenticator) Refresh(ctx context.Context) error {
	a.mu.RLock()
	gen := a.gen
	a.mu.RUnlock()
	return a.refresh(ctx, gen)
}

// refresh fetches unless another caller already did since generation
// seen.
func (a *Authenticator) refresh(ctx context.Context, seen uint64) error {
	a.fetchMu.Lock()
	defer a.fetchMu.Unlock()
	a.mu.RLock()
	done, lastErr := a.gen != seen, a.lastErr
	a.mu.RUnlock()
	if done {
		return lastErr
	}
	fctx, cancel := context.WithTimeout(ctx, a.cfg.FetchTimeout)
	defer cancel()
	raw, err := a.fetch(fctx)
	var keys []jose.JSONWebKey
	if err == nil {
		keys, err = parseKeys(raw)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.gen++
	if err != nil {
		a.lastErr = fmt.Errorf("key set from %s: %w", a.source(), err)
		return a.lastErr
	}
	a.keys, a.fetchedAt, a.lastErr = keys, a.cfg.Now(), nil
	return nil
}

func (a *Authenticator) source() string {
	switch {
	case a.cfg.Source != "":
		return a.cfg.Source
	case a.cfg.File != "":
		return a.cfg.File
	}
	return a.cfg.URL
}

// parseKeys reads a JWKS document or PEM public keys, keeping only public
// signature keys: a symmetric or private key in the set must never become
// a verification key.
func parseKeys(raw []byte) ([]jose.JSONWebKey, error) {
	var keys []jose.JSONWebKey
	if trimmed := strings.TrimSpace(string(raw)); strings.HasPrefix(trimmed, "-----BEGIN") {
		rest := []byte(trimmed)
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			k, err := pemPublicKey(block)
			if err != nil {
				return nil, err
			}
			if k == nil {
				continue
			}
			kid, err := kubernetesKeyID(k)
			if err != nil {
				return nil, err
			}
			keys = append(keys, jose.JSONWebKey{Key: k, KeyID: kid, Use: "sig"})
		}
	} else {
		var set jose.JSONWebKeySet
		if err := json.Unmarshal(raw, &set); err != nil {
			return nil, fmt.Errorf("not a JWKS document: %w", err)
		}
		for _, k := range set.Keys {
			if k.Use != "" && k.Use != "sig" {
				continue
			}
			switch k.Key.(type) {
			case *rsa.PublicKey, *ecdsa.PublicKey:
				keys = append(keys, k)
			}
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("no RSA or ECDSA public signing key found")
	}
	return keys, nil
}

func pemPublicKey(block *pem.Block) (crypto.PublicKey, error) {
	switch block.Type {
	case "PUBLIC KEY":
		return x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		return x509.ParsePKCS1PublicKey(block.Bytes)
	case "CERTIFICATE":
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		return c.PublicKey, nil
	}
	// Private keys and anything else are skipped rather than trusted.
	return nil, nil
}

// kubernetesKeyID computes the kid the API server puts in tokens signed by
// this key (unpadded base64url SHA-256 of the PKIX DER), so PEM key files
// match tokens by kid like a JWKS does.
func kubernetesKeyID(k crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

// kubeClaims is the private "kubernetes.io" claim of service-account
// tokens, as far as the broker reads it.
type kubeClaims struct {
	Namespace      string  `json:"namespace"`
	ServiceAccount *objRef `json:"serviceaccount"`
	Pod            *objRef `json:"pod"`
	Node           *objRef `json:"node"`
	Secret         *objRef `json:"secret"`
}

type objRef struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

// Claims is what a verified service-account token says.
type Claims struct {
	Namespace, ServiceAccount string
	// ServiceAccountUID, and the bound objects with their UIDs, are empty
	// when the token does not name them (a legacy secret-based token).
	ServiceAccountUID string
	PodName, PodUID   string
	NodeName, NodeUID string
	SecretName        string
	// Bound reports whether the token carries the service account's UID,
	// so that a revocation check against live objects can decide.
	Bound   bool
	Subject string
	Expiry  time.Time
}

// Authenticate implements authn.Authenticator.
func (a *Authenticator) Authenticate(ctx context.Context, req *authn.Request) (*authn.Identity, error) {
	if req == nil || req.BearerToken == "" {
		return nil, fmt.Errorf("%w: no bearer token", authn.ErrNoCredential)
	}
	if req.ClusterID != "" && req.ClusterID != a.cfg.ClusterID {
		// Another cluster's token is not this authenticator's to judge.
		return nil, fmt.Errorf("%w: jwt: cluster %q is not this key set's (%q)", authn.ErrNoCredential, req.ClusterID, a.cfg.ClusterID)
	}
	c, err := a.VerifyToken(ctx, req.BearerToken)
	if err != nil {
		return nil, err
	}
	if err := a.checkScope(c); err != nil {
		return nil, err
	}
	return c.Identity(a.cfg.TrustDomain, a.cfg.ClusterID)
}

// checkScope refuses a verified token that is not this key set's to
// accept: one of a cluster the broker checks against live objects, or one
// whose bound objects only such a check could judge. Each bearer token
// has exactly one verifier, and for a served cluster's tokens that is the
// cluster check, which refuses what this one cannot see (a deleted pod, a
// recreated service account).
func (a *Authenticator) checkScope(c *Claims) error {
	var servedErr error
	if a.cfg.ServedBy != nil {
		id, err := a.cfg.ServedBy(a.cfg.Issuer)
		if err == nil && id != "" {
			return fmt.Errorf("%w: jwt: issuer %s is cluster %q's, whose tokens are checked against its live objects, not by this key set (cluster %q); present the token with clusterid %q",
				authn.ErrDenied, a.cfg.Issuer, id, a.cfg.ClusterID, id)
		}
		servedErr = err
	}
	if a.cfg.RefuseKubernetesBound {
		var bound []string
		if c.PodName != "" {
			bound = append(bound, "pod "+c.PodName)
		}
		if c.SecretName != "" {
			bound = append(bound, "secret "+c.SecretName)
		}
		if c.NodeName != "" {
			bound = append(bound, "node "+c.NodeName)
		}
		if len(bound) > 0 {
			return fmt.Errorf("%w: jwt: token is bound to Kubernetes %s, which a key set cannot check still exists; verify it with authn.kubernetes, or set allowKubernetesBoundTokens on this jwks entry",
				authn.ErrDenied, strings.Join(bound, ", "))
		}
		// A served cluster whose issuer is not known yet (not reached
		// since start) must not stop every caller of this key set: what
		// is at stake is only an unbound token, since bound ones (all an
		// Istio agent sends) were refused above.
		return nil
	}
	if servedErr != nil {
		return fmt.Errorf("%w: jwt: cannot tell whether issuer %s belongs to a cluster the broker serves: %v", authn.ErrUnavailable, a.cfg.Issuer, servedErr)
	}
	return nil
}

// Identity is the workload the claims name, in trust domain td and
// cluster.
func (c *Claims) Identity(td spiffeid.TrustDomain, cluster string) (*authn.Identity, error) {
	id, err := authn.WorkloadID(td, c.Namespace, c.ServiceAccount)
	if err != nil {
		return nil, fmt.Errorf("jwt: %w", err)
	}
	subject := c.Subject
	if c.PodName != "" {
		subject += " pod=" + c.PodName
	}
	return &authn.Identity{
		ID:                id,
		Namespace:         c.Namespace,
		ServiceAccount:    c.ServiceAccount,
		ServiceAccountUID: c.ServiceAccountUID,
		PodName:           c.PodName,
		PodUID:            c.PodUID,
		NodeName:          c.NodeName,
		Cluster:           cluster,
		Subject:           subject,
	}, nil
}

// VerifyToken checks token's signature against the issuer's keys and its
// issuer, audience, expiry and not-before (with the leeway), and returns
// what it says. It does not know whether the objects it is bound to still
// exist.
func (a *Authenticator) VerifyToken(ctx context.Context, token string) (*Claims, error) {
	if len(token) > maxTokenBytes {
		return nil, fmt.Errorf("%w: jwt: bearer token is %d bytes, more than a service-account token can be", authn.ErrDenied, len(token))
	}
	tok, err := jwt.ParseSigned(token, a.cfg.Algorithms)
	if err != nil {
		return nil, fmt.Errorf("%w: jwt: not a compact JWS signed with an allowed algorithm: %v", authn.ErrDenied, err)
	}
	if len(tok.Headers) != 1 {
		return nil, fmt.Errorf("%w: jwt: expected one signature, got %d", authn.ErrDenied, len(tok.Headers))
	}
	hdr := tok.Headers[0]

	// One struct, so that the payload is decoded once.
	var claims struct {
		jwt.Claims
		Kubernetes *kubeClaims `json:"kubernetes.io"`
	}
	if err := a.verify(ctx, tok, hdr, &claims); err != nil {
		return nil, err
	}
	std := &claims.Claims

	if err := std.ValidateWithLeeway(jwt.Expected{
		Issuer:      a.cfg.Issuer,
		AnyAudience: a.cfg.Audiences,
		Time:        a.cfg.Now(),
	}, a.cfg.Leeway); err != nil {
		return nil, fmt.Errorf("%w: jwt: %s", authn.ErrDenied, describe(err, std, a.cfg))
	}
	// A token without expiry (the legacy secret-based kind) would be good
	// forever if stolen; Istio's third-party tokens always expire.
	if std.Expiry == nil {
		return nil, fmt.Errorf("%w: jwt: token has no expiry (legacy service-account token?)", authn.ErrDenied)
	}

	ns, sa, err := authn.ParseServiceAccountUsername(std.Subject)
	if err != nil {
		return nil, fmt.Errorf("jwt: %w", err)
	}
	c := &Claims{Namespace: ns, ServiceAccount: sa, Subject: std.Subject, Expiry: std.Expiry.Time()}
	if k := claims.Kubernetes; k != nil {
		// The API server writes both; disagreement means the token was
		// not minted by it, whatever its signature says.
		if k.Namespace != ns || k.ServiceAccount == nil || k.ServiceAccount.Name != sa {
			saName := ""
			if k.ServiceAccount != nil {
				saName = k.ServiceAccount.Name
			}
			return nil, fmt.Errorf("%w: jwt: kubernetes.io claim names %s/%s but sub is %q", authn.ErrDenied, k.Namespace, saName, std.Subject)
		}
		c.ServiceAccountUID = k.ServiceAccount.UID
		c.Bound = c.ServiceAccountUID != ""
		if k.Pod != nil {
			c.PodName, c.PodUID = k.Pod.Name, k.Pod.UID
			if c.PodName == "" || c.PodUID == "" {
				return nil, fmt.Errorf("%w: jwt: kubernetes.io claim names a pod without name or uid", authn.ErrDenied)
			}
		}
		if k.Node != nil {
			c.NodeName, c.NodeUID = k.Node.Name, k.Node.UID
		}
		if k.Secret != nil {
			c.SecretName = k.Secret.Name
		}
	}
	return c, nil
}

// verify checks the signature, fetching the key set when it is missing,
// stale, or lacks the token's kid.
func (a *Authenticator) verify(ctx context.Context, tok *jwt.JSONWebToken, hdr jose.Header, dest ...any) error {
	a.mu.RLock()
	keys, fetchedAt, gen, lastErr := a.keys, a.fetchedAt, a.gen, a.lastErr
	a.mu.RUnlock()

	stale := keys == nil || a.cfg.Now().Sub(fetchedAt) > a.cfg.RefreshInterval
	if stale || !hasKID(keys, hdr.KeyID) {
		// Rate-limited so a flood of tokens with made-up kids costs one
		// fetch per MinRefreshInterval; when the limit is hit the
		// current keys decide.
		if a.limiter.Allow() {
			lastErr = a.refresh(ctx, gen)
			a.mu.RLock()
			keys, fetchedAt = a.keys, a.fetchedAt
			a.mu.RUnlock()
		}
	}
	if keys == nil {
		if lastErr == nil {
			lastErr = errors.New("not fetched yet")
		}
		return fmt.Errorf("%w: jwt: no verification keys: %v", authn.ErrUnavailable, lastErr)
	}
	// Keys that cannot be re-read are not trusted for ever: one the issuer
	// withdrew (a compromised key) would stay good here. Unavailable, not
	// denied: the token may be fine, and the agent retries (the cluster
	// package asks TokenReview instead).
	if age := a.cfg.Now().Sub(fetchedAt); age > a.cfg.MaxKeyAge {
		if lastErr == nil {
			lastErr = errors.New("no refresh attempted")
		}
		return fmt.Errorf("%w: jwt: the key set of %s could not be refreshed since %s (%s ago; keys are used at most %s after their last fetch): %v",
			authn.ErrUnavailable, a.source(), fetchedAt.UTC().Format(time.RFC3339), age.Round(time.Second), a.cfg.MaxKeyAge, lastErr)
	}

	candidates := keys
	if hdr.KeyID != "" {
		candidates = nil
		for _, k := range keys {
			if k.KeyID == hdr.KeyID {
				candidates = append(candidates, k)
			}
		}
		if len(candidates) == 0 {
			return fmt.Errorf("%w: %w: jwt: signing key %q is not in the key set of %s", authn.ErrDenied, ErrUnknownKey, hdr.KeyID, a.cfg.Issuer)
		}
	}
	var err error
	for _, k := range candidates {
		if err = tok.Claims(k.Key, dest...); err == nil {
			return nil
		}
	}
	return fmt.Errorf("%w: jwt: signature not valid for any key of %s: %v", authn.ErrDenied, a.cfg.Issuer, err)
}

func hasKID(keys []jose.JSONWebKey, kid string) bool {
	if kid == "" {
		return len(keys) > 0
	}
	for _, k := range keys {
		if k.KeyID == kid {
			return true
		}
	}
	return false
}

// describe turns a claim validation error into a message that says what
// was expected, without echoing the token.
func describe(err error, c *jwt.Claims, cfg Config) string {
	switch {
	case errors.Is(err, jwt.ErrInvalidIssuer):
		return fmt.Sprintf("issuer %q, want %q", c.Issuer, cfg.Issuer)
	case errors.Is(err, jwt.ErrInvalidAudience):
		return fmt.Sprintf("token audiences %q do not include any of %q", []string(c.Audience), cfg.Audiences)
	case errors.Is(err, jwt.ErrExpired):
		return fmt.Sprintf("token expired at %s", c.Expiry.Time().UTC().Format(time.RFC3339))
	case errors.Is(err, jwt.ErrNotValidYet):
		return fmt.Sprintf("token not valid before %s", c.NotBefore.Time().UTC().Format(time.RFC3339))
	case errors.Is(err, jwt.ErrIssuedInTheFuture):
		return fmt.Sprintf("token issued in the future (%s)", c.IssuedAt.Time().UTC().Format(time.RFC3339))
	}
	return err.Error()
}
