package testenv

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a throwaway certificate authority for test TLS (API server serving
// and client certificates, fake CA servers, the broker's serving cert).
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
}

// NewCA creates a self-signed ECDSA P-256 CA valid for a day.
func NewCA(t testing.TB, commonName string) *CA {
	t.Helper()
	return newCA(t, commonName, nil, 24*time.Hour)
}

// newCA creates a CA signed by parent, or self-signed when parent is nil.
func newCA(t testing.TB, commonName string, parent *CA, ttl time.Duration) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"meshca testenv"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(ttl),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	issuer, signer := tmpl, crypto.Signer(key)
	if parent != nil {
		issuer, signer = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &CA{Cert: cert, Key: key, CertPEM: pemEncode("CERTIFICATE", der)}
}

// LeafOptions describes a certificate issued by CA.Issue.
type LeafOptions struct {
	CommonName   string
	Organization []string
	DNSNames     []string
	IPs          []net.IP
	URIs         []*url.URL
	// Client and Server select the extended key usages (both if neither is set).
	Client, Server bool
	TTL            time.Duration // default 24h
	// PublicKey, when set, is certified instead of a freshly generated key
	// (KeyPEM is then empty).
	PublicKey crypto.PublicKey
}

// Issue signs a leaf certificate and returns it with its (new) private key,
// both PEM encoded.
func (ca *CA) Issue(t testing.TB, o LeafOptions) (certPEM, keyPEM []byte) {
	t.Helper()
	pub := o.PublicKey
	if pub == nil {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		pub = key.Public()
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		keyPEM = pemEncode("PRIVATE KEY", der)
	}
	ttl := o.TTL
	if ttl == 0 {
		ttl = 24 * time.Hour
	}
	var eku []x509.ExtKeyUsage
	if o.Server || !o.Client {
		eku = append(eku, x509.ExtKeyUsageServerAuth)
	}
	if o.Client || !o.Server {
		eku = append(eku, x509.ExtKeyUsageClientAuth)
	}
	ku := x509.KeyUsageDigitalSignature
	if _, ok := pub.(*rsa.PublicKey); ok {
		ku |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: o.CommonName, Organization: o.Organization},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(ttl),
		KeyUsage:     ku,
		ExtKeyUsage:  eku,
		DNSNames:     o.DNSNames,
		IPAddresses:  o.IPs,
		URIs:         o.URIs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return pemEncode("CERTIFICATE", der), keyPEM
}

// Pool returns a cert pool holding the CA certificate.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func pemEncode(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// writeFile writes data to dir/name (mode 0600) and returns the path.
func writeFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// NewIntermediate creates a CA signed by ca (an issuing CA under a root).
func (ca *CA) NewIntermediate(t testing.TB, commonName string) *CA {
	t.Helper()
	return newCA(t, commonName, ca, 23*time.Hour)
}

// KeyPEM is the CA's private key, PKCS #8 PEM.
func (ca *CA) KeyPEM(t testing.TB) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return pemEncode("PRIVATE KEY", der)
}

// WriteCACerts writes Istio's plugged-in CA layout for an issuing CA under
// root into a new directory and returns it: ca-cert.pem, ca-key.pem,
// cert-chain.pem (issuing CA then root) and root-cert.pem.
func WriteCACerts(t testing.TB, issuing, root *CA) string {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, dir, "ca-cert.pem", issuing.CertPEM)
	writeFile(t, dir, "ca-key.pem", issuing.KeyPEM(t))
	writeFile(t, dir, "cert-chain.pem", append(append([]byte{}, issuing.CertPEM...), root.CertPEM...))
	writeFile(t, dir, "root-cert.pem", root.CertPEM)
	return dir
}
