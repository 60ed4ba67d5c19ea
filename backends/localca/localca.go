// Package localca is the broker's embedded certificate authority: it signs
// with a CA key held on local disk, either Istio's plugged-in "cacerts"
// files (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem) or a
// self-signed root it generates on first start and keeps in its data
// directory.
package localca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/meshca/broker/backends"
)

// Type is the backend's name in the configuration.
const Type = "local"

func init() { backends.RegisterConfig(Type, newFromConfig) }

// Config is the `backend.local` configuration section.
type Config struct {
	// CACertsDir holds Istio-style cacerts files. When set, nothing is
	// generated.
	CACertsDir string `json:"caCertsDir,omitempty"`
	// Dir is where a generated root is kept (default: <dataDir>/localca).
	Dir string `json:"dir,omitempty"`
	// KeyAlgorithm of a generated root: ECDSA-P256 (default), ECDSA-P384,
	// RSA-2048, RSA-3072, RSA-4096.
	KeyAlgorithm string `json:"keyAlgorithm,omitempty"`
	// RootTTL of a generated root (default 87600h, ten years).
	RootTTL backends.Duration `json:"rootTTL,omitempty"`
	// Organization in a generated root's subject (default "Mesh CA Broker").
	Organization string `json:"organization,omitempty"`
}

// Istio's cacerts file names.
const (
	FileCACert    = "ca-cert.pem"
	FileCAKey     = "ca-key.pem"
	FileCertChain = "cert-chain.pem"
	FileRootCert  = "root-cert.pem"
)

// CA signs with a local key.
type CA struct {
	signer  crypto.Signer
	cert    *x509.Certificate
	chain   []*x509.Certificate // issuer's chain above the leaf: ca-cert first
	anchors []*x509.Certificate
}

func newFromConfig(_ context.Context, cfg Config, opts backends.Options) (backends.Signer, error) {
	if cfg.CACertsDir != "" {
		return LoadCACerts(cfg.CACertsDir)
	}
	dir := cfg.Dir
	if dir == "" {
		if opts.DataDir == "" {
			return nil, errors.New("local: dir is not set and the broker has no dataDir")
		}
		dir = filepath.Join(opts.DataDir, "localca")
	}
	ca, created, err := LoadOrCreate(dir, cfg)
	if err != nil {
		return nil, err
	}
	if created {
		opts.Logger.Warn("generated a new self-signed root CA; distribute its root-cert.pem to the mesh", "dir", dir, "subject", ca.cert.Subject.String(), "notAfter", ca.cert.NotAfter)
	}
	return ca, nil
}

// LoadCACerts loads Istio's cacerts layout from dir.
func LoadCACerts(dir string) (*CA, error) {
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("local: reading cacerts: %w", err)
		}
		return b, nil
	}
	certPEM, err := read(FileCACert)
	if err != nil {
		return nil, err
	}
	keyPEM, err := read(FileCAKey)
	if err != nil {
		return nil, err
	}
	rootPEM, err := read(FileRootCert)
	if err != nil {
		return nil, err
	}
	certs, err := backends.ParseCertificates(certPEM)
	if err != nil || len(certs) == 0 {
		return nil, fmt.Errorf("local: %s: no certificate (%v)", FileCACert, err)
	}
	roots, err := backends.ParseCertificates(rootPEM)
	if err != nil || len(roots) == 0 {
		return nil, fmt.Errorf("local: %s: no certificate (%v)", FileRootCert, err)
	}
	chain := certs
	if b, err := os.ReadFile(filepath.Join(dir, FileCertChain)); err == nil {
		if chain, err = backends.ParseCertificates(b); err != nil || len(chain) == 0 {
			return nil, fmt.Errorf("local: %s: no certificate (%v)", FileCertChain, err)
		}
		// Some installs leave ca-cert.pem out of cert-chain.pem.
		if !chain[0].Equal(certs[0]) {
			chain = append([]*x509.Certificate{certs[0]}, chain...)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("local: reading cacerts: %w", err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("local: %s: %w", FileCAKey, err)
	}
	return newCA(key, chain, roots)
}

// LoadOrCreate loads the root kept in dir, generating it on first use.
func LoadOrCreate(dir string, cfg Config) (*CA, bool, error) {
	certPath, keyPath := filepath.Join(dir, FileRootCert), filepath.Join(dir, FileCAKey)
	certPEM, errC := os.ReadFile(certPath)
	keyPEM, errK := os.ReadFile(keyPath)
	if errC == nil && errK == nil {
		certs, err := backends.ParseCertificates(certPEM)
		if err != nil || len(certs) != 1 {
			return nil, false, fmt.Errorf("local: %s: want exactly one certificate (%v)", certPath, err)
		}
		key, err := parseKey(keyPEM)
		if err != nil {
			return nil, false, fmt.Errorf("local: %s: %w", keyPath, err)
		}
		ca, err := newCA(key, certs, certs)
		return ca, false, err
	}
	if !errors.Is(errC, os.ErrNotExist) || !errors.Is(errK, os.ErrNotExist) {
		return nil, false, fmt.Errorf("local: %s and %s must both exist or both be absent (%v, %v)", certPath, keyPath, errC, errK)
	}
	key, root, err := generateRoot(cfg)
	if err != nil {
		return nil, false, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, false, fmt.Errorf("local: encoding the root key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("local: creating %s: %w", dir, err)
	}
	if err := writeFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, false, err
	}
	if err := writeFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}), 0o644); err != nil {
		return nil, false, err
	}
	ca, err := newCA(key, []*x509.Certificate{root}, []*x509.Certificate{root})
	return ca, true, err
}

func newCA(key crypto.Signer, chain, anchors []*x509.Certificate) (*CA, error) {
	cert := chain[0]
	if !cert.IsCA {
		return nil, errors.New("local: the signing certificate is not a CA")
	}
	if k, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(key.Public()) {
		return nil, errors.New("local: the CA key does not match the signing certificate")
	}
	if time.Now().After(cert.NotAfter) {
		return nil, fmt.Errorf("local: the signing certificate expired at %s", cert.NotAfter)
	}
	return &CA{signer: key, cert: cert, chain: chain, anchors: anchors}, nil
}

// Sign implements backends.Signer.
func (ca *CA) Sign(ctx context.Context, req *backends.Request) ([]*x509.Certificate, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("local: serial number: %w", err)
	}
	tmpl := *req.Template
	tmpl.SerialNumber = serial
	// A certificate must not outlive its issuer; Istio's CA caps the same way.
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, ca.cert, req.CSR.PublicKey, ca.signer)
	if err != nil {
		return nil, fmt.Errorf("local: signing: %w: %w", backends.ErrRefused, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("local: parsing what was signed: %w", err)
	}
	return append([]*x509.Certificate{leaf}, ca.chain...), nil
}

// TrustAnchors implements backends.Signer.
func (ca *CA) TrustAnchors(context.Context) ([]*x509.Certificate, error) { return ca.anchors, nil }

func generateRoot(cfg Config) (crypto.Signer, *x509.Certificate, error) {
	var key crypto.Signer
	var err error
	switch cfg.KeyAlgorithm {
	case "", "ECDSA-P256":
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ECDSA-P384":
		key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "RSA-2048":
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	case "RSA-3072":
		key, err = rsa.GenerateKey(rand.Reader, 3072)
	case "RSA-4096":
		key, err = rsa.GenerateKey(rand.Reader, 4096)
	default:
		return nil, nil, fmt.Errorf("local: keyAlgorithm %q is not one of ECDSA-P256, ECDSA-P384, RSA-2048, RSA-3072, RSA-4096", cfg.KeyAlgorithm)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("local: generating the root key: %w", err)
	}
	ttl := cfg.RootTTL.Duration
	if ttl <= 0 {
		ttl = 10 * 365 * 24 * time.Hour
	}
	org := cfg.Organization
	if org == "" {
		org = "Mesh CA Broker"
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, nil, err
	}
	skid := sha1.Sum(pubDER)
	now := time.Now().Add(-time.Minute)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{org}, CommonName: org + " Root CA"},
		NotBefore:             now,
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          skid[:],
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("local: self-signing the root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	return key, cert, err
}

func parseKey(b []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var k any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unsupported PEM block %q", block.Type)
	}
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key type %T cannot sign", k)
	}
	return s, nil
}

func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return fmt.Errorf("local: writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("local: writing %s: %w", path, err)
	}
	return nil
}
