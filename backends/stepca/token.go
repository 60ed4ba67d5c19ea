package stepca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.step.sm/crypto/jose"
)

// tokenIssuer mints one-time JWK provisioner tokens, the way `step ca
// token` does, plus a binding to the CSR.
type tokenIssuer struct {
	provisioner string
	kid         string
	audience    string
	lifetime    time.Duration
	signer      jose.Signer
}

// newTokenIssuer decrypts the provisioner's JWE-encrypted private JWK.
// The password is never prompted for: a broker has no terminal.
func newTokenIssuer(provisioner, kid, audience, encryptedKey string, password []byte, lifetime time.Duration) (*tokenIssuer, error) {
	enc, err := jose.ParseEncrypted(strings.TrimSpace(encryptedKey))
	if err != nil {
		return nil, fmt.Errorf("parsing the encrypted key: %w", err)
	}
	plain, err := enc.Decrypt(password)
	if err != nil {
		return nil, fmt.Errorf("decrypting the key (wrong password?): %w", err)
	}
	var jwk jose.JSONWebKey
	if err := json.Unmarshal(plain, &jwk); err != nil {
		return nil, fmt.Errorf("parsing the decrypted JWK: %w", err)
	}
	key, ok := jwk.Key.(crypto.Signer)
	if !ok || jwk.IsPublic() {
		return nil, errors.New("the decrypted JWK is not a private key")
	}
	switch {
	case kid == "":
		kid = jwk.KeyID
	case jwk.KeyID != "" && jwk.KeyID != kid:
		return nil, fmt.Errorf("the key's kid %q is not the configured keyId %q", jwk.KeyID, kid)
	}
	if kid == "" {
		return nil, errors.New("no kid: set keyId")
	}
	alg := jwk.Algorithm
	if alg == "" {
		if alg, err = defaultAlgorithm(key); err != nil {
			return nil, err
		}
	}
	opts := new(jose.SignerOptions).WithType("JWT").WithHeader("kid", kid)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: key}, opts)
	if err != nil {
		return nil, fmt.Errorf("creating the token signer: %w", err)
	}
	return &tokenIssuer{provisioner: provisioner, kid: kid, audience: audience, lifetime: lifetime, signer: signer}, nil
}

func defaultAlgorithm(k crypto.Signer) (string, error) {
	switch k := k.Public().(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return "ES256", nil
		case elliptic.P384():
			return "ES384", nil
		case elliptic.P521():
			return "ES512", nil
		}
	case *rsa.PublicKey:
		return "RS256", nil
	case ed25519.PublicKey:
		return "EdDSA", nil
	}
	return "", fmt.Errorf("cannot pick a JWS algorithm for a %T key", k)
}

// tokenClaims is what step-ca's JWK provisioner reads from a sign token.
type tokenClaims struct {
	jose.Claims
	// SANs must equal the CSR's names; they become the certificate's.
	SANs []string `json:"sans"`
	// Cnf binds the token to one CSR, so a token that leaked from a log
	// or a proxy cannot certify another key.
	Cnf *confirmation `json:"cnf,omitempty"`
}

type confirmation struct {
	CSRFingerprint string `json:"x5rt#S256"`
}

// token mints the token for one request. Subject is the SPIFFE ID (or,
// for a certificate without URIs, its first DNS name); the SANs are exactly
// the template's names.
func (t *tokenIssuer) token(csr *x509.CertificateRequest, tmpl *x509.Certificate, now time.Time) (string, error) {
	sans := templateSANs(tmpl)
	if len(sans) == 0 {
		return "", errors.New("the template names nothing")
	}
	subject := sans[0]
	if tmpl.Subject.CommonName != "" && len(tmpl.URIs) == 0 {
		subject = tmpl.Subject.CommonName
	}
	var id [32]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", err
	}
	fp := sha256.Sum256(csr.Raw)
	claims := tokenClaims{
		Claims: jose.Claims{
			ID:       hex.EncodeToString(id[:]),
			Issuer:   t.provisioner,
			Subject:  subject,
			Audience: jose.Audience{t.audience},
			IssuedAt: jose.NewNumericDate(now),
			// step-ca allows a minute of clock skew either way.
			NotBefore: jose.NewNumericDate(now),
			Expiry:    jose.NewNumericDate(now.Add(t.lifetime)),
		},
		SANs: sans,
		Cnf:  &confirmation{CSRFingerprint: base64.RawURLEncoding.EncodeToString(fp[:])},
	}
	return jose.Signed(t.signer).Claims(claims).CompactSerialize()
}

func templateSANs(tmpl *x509.Certificate) []string {
	var sans []string
	for _, u := range tmpl.URIs {
		sans = append(sans, u.String())
	}
	sans = append(sans, tmpl.DNSNames...)
	for _, ip := range tmpl.IPAddresses {
		sans = append(sans, ip.String())
	}
	sans = append(sans, tmpl.EmailAddresses...)
	return sans
}
