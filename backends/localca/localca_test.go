package localca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/backends/backendtest"
)

const workload = "spiffe://cluster.local/ns/shop/sa/cart"

func newSigner(t *testing.T, cfg string) backends.Signer {
	t.Helper()
	s, err := backends.New(context.Background(), Type, backends.Options{Config: json.RawMessage(cfg), DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestGeneratedRootIssuesConformingCertificates(t *testing.T) {
	for _, alg := range []string{"", "ECDSA-P384", "RSA-2048"} {
		t.Run("root "+alg, func(t *testing.T) {
			backendtest.Run(t, newSigner(t, `{"keyAlgorithm":"`+alg+`"}`), workload)
		})
	}
}

// TestHostileSubjects: the local CA builds the certificate from the
// approved template alone, so no CSR subject reaches it.
func TestHostileSubjects(t *testing.T) {
	backendtest.RunHostileSubjects(t, newSigner(t, `{}`), workload)
}

func TestGeneratedRootIsKeptAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	first, created, err := LoadOrCreate(dir, Config{})
	if err != nil || !created {
		t.Fatalf("first start: created=%v err=%v", created, err)
	}
	second, created, err := LoadOrCreate(dir, Config{})
	if err != nil || created {
		t.Fatalf("second start: created=%v err=%v", created, err)
	}
	if !first.cert.Equal(second.cert) {
		t.Fatal("the root changed across restarts")
	}
	fi, err := os.Stat(filepath.Join(dir, FileCAKey))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	// Half a pair is an operator mistake to report, not to paper over by
	// generating a new root that would split the mesh's trust.
	os.Remove(filepath.Join(dir, FileRootCert))
	if _, _, err := LoadOrCreate(dir, Config{}); err == nil || !strings.Contains(err.Error(), "both exist") {
		t.Fatalf("half a key pair: err = %v", err)
	}
}

// writeCACerts writes Istio's plugged-in cacerts layout: a root and an
// intermediate that signs.
func writeCACerts(t *testing.T, dir string, withChain bool) (root, inter *x509.Certificate) {
	t.Helper()
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	interKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	rootT := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Corp Root"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	rootDER, _ := x509.CreateCertificate(rand.Reader, rootT, rootT, rootKey.Public(), rootKey)
	root, _ = x509.ParseCertificate(rootDER)
	interT := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "Mesh Intermediate"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(12 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	interDER, _ := x509.CreateCertificate(rand.Reader, interT, root, interKey.Public(), rootKey)
	inter, _ = x509.ParseCertificate(interDER)
	enc := func(der ...[]byte) []byte {
		var out []byte
		for _, d := range der {
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d})...)
		}
		return out
	}
	keyDER, _ := x509.MarshalECPrivateKey(interKey)
	files := map[string][]byte{
		FileCACert:   enc(interDER),
		FileCAKey:    pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		FileRootCert: enc(rootDER),
	}
	if withChain {
		files[FileCertChain] = enc(interDER, rootDER)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return root, inter
}

func TestIstioCACertsLayout(t *testing.T) {
	for _, withChain := range []bool{true, false} {
		name := "without cert-chain.pem"
		if withChain {
			name = "with cert-chain.pem"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			root, inter := writeCACerts(t, dir, withChain)
			s := newSigner(t, `{"caCertsDir":"`+dir+`"}`)
			backendtest.Run(t, s, workload)
			anchors, _ := s.TrustAnchors(context.Background())
			if len(anchors) != 1 || !anchors[0].Equal(root) {
				t.Fatalf("anchors = %v, want the root only", anchors)
			}
			req, _ := backendtest.NewRequest(t, workload, 100*time.Hour)
			chain, err := s.Sign(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			if !chain[1].Equal(inter) {
				t.Errorf("chain[1] is not the intermediate")
			}
			// The leaf must not outlive the intermediate that signed it.
			if chain[0].NotAfter.After(inter.NotAfter) {
				t.Errorf("leaf NotAfter %v is after its issuer's %v", chain[0].NotAfter, inter.NotAfter)
			}
		})
	}
}

func TestConfigErrorsNameTheProblem(t *testing.T) {
	cases := []struct{ name, cfg, mention string }{
		{"unknown key", `{"caCertDir":"/x"}`, `unknown key "caCertDir"`},
		{"bad algorithm", `{"keyAlgorithm":"DSA"}`, "keyAlgorithm"},
		{"missing cacerts", `{"caCertsDir":"/nonexistent"}`, "ca-cert.pem"},
		{"bad duration", `{"rootTTL":"forever"}`, "forever"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := backends.New(context.Background(), Type, backends.Options{Config: json.RawMessage(tc.cfg), DataDir: t.TempDir()})
			if err == nil || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.mention)
			}
		})
	}
}

func TestMismatchedKeyIsRefused(t *testing.T) {
	dir := t.TempDir()
	writeCACerts(t, dir, true)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalECPrivateKey(other)
	os.WriteFile(filepath.Join(dir, FileCAKey), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
	if _, err := LoadCACerts(dir); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("err = %v", err)
	}
}

func BenchmarkSign(b *testing.B) {
	ca, _, err := LoadOrCreate(b.TempDir(), Config{})
	if err != nil {
		b.Fatal(err)
	}
	req, _ := backendtest.NewRequest(b, workload, time.Hour)
	ctx := context.Background()
	for b.Loop() {
		if _, err := ca.Sign(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}
