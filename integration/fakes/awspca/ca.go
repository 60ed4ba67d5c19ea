package awspca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// hierarchy is the in-memory PKI behind the fake: a self-signed root and the
// subordinate CA that the fake's CA ARN names. Real Private CA keeps the
// subordinate's key in an HSM; here it is an ordinary key in memory.
type hierarchy struct {
	root, sub       *x509.Certificate
	rootPEM, subPEM string
	subKey          crypto.Signer
	keyAlgorithm    string // Private CA's name for the subordinate's key type
}

func newHierarchy(keyAlgorithm string, validity time.Duration) (*hierarchy, error) {
	rootKey, err := newKey(keyAlgorithm)
	if err != nil {
		return nil, err
	}
	subKey, err := newKey(keyAlgorithm)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	rootTmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "Fake Private CA Root", Organization: []string{"meshca fakes"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity + 24*time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          keyID(rootKey.Public()),
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		return nil, fmt.Errorf("creating root: %w", err)
	}
	root, _ := x509.ParseCertificate(rootDER)
	subTmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "Fake Private CA Subordinate", Organization: []string{"meshca fakes"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          keyID(subKey.Public()),
	}
	subDER, err := x509.CreateCertificate(rand.Reader, subTmpl, root, subKey.Public(), rootKey)
	if err != nil {
		return nil, fmt.Errorf("creating subordinate: %w", err)
	}
	sub, _ := x509.ParseCertificate(subDER)
	return &hierarchy{
		root: root, sub: sub,
		rootPEM: pemString(rootDER), subPEM: pemString(subDER),
		subKey: subKey, keyAlgorithm: keyAlgorithm,
	}, nil
}

func newKey(alg string) (crypto.Signer, error) {
	switch alg {
	case "RSA_2048":
		return rsa.GenerateKey(rand.Reader, 2048)
	case "RSA_3072":
		return rsa.GenerateKey(rand.Reader, 3072)
	case "RSA_4096":
		return rsa.GenerateKey(rand.Reader, 4096)
	case "EC_prime256v1":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "EC_secp384r1":
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "EC_secp521r1":
		return ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	}
	return nil, fmt.Errorf("fake awspca: key algorithm %q not supported", alg)
}

// signatureAlgorithms maps Private CA's SigningAlgorithm names to Go's, with
// the key family each needs (Private CA refuses a mismatch).
var signatureAlgorithms = map[string]struct {
	alg    x509.SignatureAlgorithm
	family string
}{
	"SHA256WITHRSA":     {x509.SHA256WithRSA, "RSA"},
	"SHA384WITHRSA":     {x509.SHA384WithRSA, "RSA"},
	"SHA512WITHRSA":     {x509.SHA512WithRSA, "RSA"},
	"SHA256WITHRSA_PSS": {x509.SHA256WithRSAPSS, "RSA"},
	"SHA384WITHRSA_PSS": {x509.SHA384WithRSAPSS, "RSA"},
	"SHA512WITHRSA_PSS": {x509.SHA512WithRSAPSS, "RSA"},
	"SHA256WITHECDSA":   {x509.ECDSAWithSHA256, "EC"},
	"SHA384WITHECDSA":   {x509.ECDSAWithSHA384, "EC"},
	"SHA512WITHECDSA":   {x509.ECDSAWithSHA512, "EC"},
}

func defaultSigningAlgorithm(keyAlgorithm string) string {
	switch keyAlgorithm {
	case "EC_prime256v1":
		return "SHA256WITHECDSA"
	case "EC_secp384r1":
		return "SHA384WITHECDSA"
	case "EC_secp521r1":
		return "SHA512WITHECDSA"
	}
	return "SHA256WITHRSA"
}

func keyID(pub crypto.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil
	}
	sum := sha1.Sum(spki.PublicKey.Bytes)
	return sum[:]
}

func randomSerial() *big.Int {
	// Private CA serials are 16 random bytes; keep the top bit clear so the
	// DER integer stays positive without padding.
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[0] &= 0x7f
	b[0] |= 0x01
	return new(big.Int).SetBytes(b)
}

// pemString encodes one certificate without the trailing newline, the way
// Private CA's JSON answers carry them.
func pemString(der []byte) string {
	return strings.TrimRight(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), "\n")
}
