// Package devissuer is a stand-in for a cluster's service-account token
// issuer: a generated signing key, the JWKS that verifies it, and
// Kubernetes-style tokens for any service account. The demo, load
// generation and tests use it where no API server runs.
package devissuer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// DefaultIssuer is the issuer of an in-cluster API server with default
// settings.
const DefaultIssuer = "https://kubernetes.default.svc.cluster.local"

// Issuer signs tokens.
type Issuer struct {
	URL string
	key *ecdsa.PrivateKey
	kid string
}

// New generates an issuer with a fresh ES256 key.
func New(url string) (*Issuer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return &Issuer{URL: url, key: key, kid: "devissuer-1"}, nil
}

// JWKS is the key set that verifies the issuer's tokens.
func (i *Issuer) JWKS() ([]byte, error) {
	jwk := jose.JSONWebKey{Key: i.key.Public(), KeyID: i.kid, Algorithm: string(jose.ES256), Use: "sig"}
	return json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{jwk}})
}

// WriteJWKS writes the key set to path.
func (i *Issuer) WriteJWKS(path string) error {
	b, err := i.JWKS()
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// Token mints a service-account token as the TokenRequest API would: sub
// system:serviceaccount:<ns>:<sa>, the kubernetes.io claim, the given
// audiences and lifetime.
func (i *Issuer) Token(namespace, serviceAccount string, audiences []string, ttl time.Duration) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: i.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", i.kid))
	if err != nil {
		return "", err
	}
	now := time.Now()
	claims := jwt.Claims{
		Issuer:    i.URL,
		Subject:   fmt.Sprintf("system:serviceaccount:%s:%s", namespace, serviceAccount),
		Audience:  jwt.Audience(audiences),
		IssuedAt:  jwt.NewNumericDate(now),
		NotBefore: jwt.NewNumericDate(now),
		Expiry:    jwt.NewNumericDate(now.Add(ttl)),
	}
	k8s := map[string]any{"kubernetes.io": map[string]any{
		"namespace":      namespace,
		"serviceaccount": map[string]any{"name": serviceAccount, "uid": "00000000-0000-0000-0000-000000000001"},
	}}
	return jwt.Signed(signer).Claims(claims).Claims(k8s).Serialize()
}
