package gcpcas

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
	"time"
)

// hierarchy is the in-memory PKI behind one fake CA: a self-signed root and
// the subordinate CA that issues. Real CA Service keeps keys in Cloud KMS.
type hierarchy struct {
	root, sub       *x509.Certificate
	rootPEM, subPEM string
	subKey          crypto.Signer
}

func newHierarchy(keyAlgorithm, name string, validity time.Duration) (*hierarchy, error) {
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
		Subject:               pkix.Name{CommonName: "Fake CAS Root " + name, Organization: []string{"meshca fakes"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity + 24*time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
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
		Subject:               pkix.Name{CommonName: "Fake CAS Subordinate " + name, Organization: []string{"meshca fakes"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
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
	return &hierarchy{root: root, sub: sub, rootPEM: pemString(rootDER), subPEM: pemString(subDER), subKey: subKey}, nil
}

// newKey makes a key for one of CA Service's key algorithm names.
func newKey(alg string) (crypto.Signer, error) {
	switch alg {
	case "RSA_PKCS1_2048_SHA256", "RSA_PSS_2048_SHA256":
		return rsa.GenerateKey(rand.Reader, 2048)
	case "EC_P256_SHA256":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "EC_P384_SHA384":
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	}
	return nil, fmt.Errorf("fake gcpcas: key algorithm %q not supported", alg)
}

func signatureAlgorithm(alg string) x509.SignatureAlgorithm {
	switch alg {
	case "RSA_PSS_2048_SHA256":
		return x509.SHA256WithRSAPSS
	case "EC_P256_SHA256":
		return x509.ECDSAWithSHA256
	case "EC_P384_SHA384":
		return x509.ECDSAWithSHA384
	}
	return x509.SHA256WithRSA
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
	b := make([]byte, 20)
	_, _ = rand.Read(b)
	b[0] &= 0x7f
	b[0] |= 0x01
	return new(big.Int).SetBytes(b)
}

// pemString encodes one certificate as CA Service returns it, newline
// terminated.
func pemString(der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}
