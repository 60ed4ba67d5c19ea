package testenv

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// SigningKey is an RSA key a test holds, added to an API server's
// verification keys (KubeArgs("--service-account-key-file="+k.File); the
// flag may be repeated), so the test can mint tokens the API server and
// its published key set accept as its own: the only way to present a
// genuinely expired or not-yet-valid token, or one naming UIDs of the
// test's choosing, since TokenRequest refuses all of those.
type SigningKey struct {
	Key  *rsa.PrivateKey
	KID  string
	File string
}

// NewSigningKey writes a fresh key's public half to a file.
func NewSigningKey(t testing.TB) *SigningKey {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "extra-sa.pub")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return &SigningKey{Key: key, KID: base64.RawURLEncoding.EncodeToString(sum[:]), File: file}
}

// TokenClaims shape a minted service-account token.
type TokenClaims struct {
	Issuer, Namespace, ServiceAccount, ServiceAccountUID string
	// PodName and PodUID bind the token to a pod when set.
	PodName, PodUID string
	Audiences       []string // default [istio-ca]
	// NotBefore and Expiry (default: now-1m and now+1h).
	NotBefore, Expiry time.Time
}

// Mint signs a token shaped like the API server's own.
func (k *SigningKey) Mint(t testing.TB, c TokenClaims) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: k.Key, KeyID: k.KID}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Audiences) == 0 {
		c.Audiences = []string{IstioCAAudience}
	}
	if c.NotBefore.IsZero() {
		c.NotBefore = time.Now().Add(-time.Minute)
	}
	if c.Expiry.IsZero() {
		c.Expiry = time.Now().Add(time.Hour)
	}
	std := jwt.Claims{
		Issuer:    c.Issuer,
		Subject:   "system:serviceaccount:" + c.Namespace + ":" + c.ServiceAccount,
		Audience:  jwt.Audience(c.Audiences),
		Expiry:    jwt.NewNumericDate(c.Expiry),
		NotBefore: jwt.NewNumericDate(c.NotBefore),
		IssuedAt:  jwt.NewNumericDate(c.NotBefore),
	}
	kube := map[string]any{
		"namespace":      c.Namespace,
		"serviceaccount": map[string]string{"name": c.ServiceAccount, "uid": c.ServiceAccountUID},
	}
	if c.PodName != "" {
		kube["pod"] = map[string]string{"name": c.PodName, "uid": c.PodUID}
	}
	tok, err := jwt.Signed(signer).Claims(std).Claims(map[string]any{"kubernetes.io": kube}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
