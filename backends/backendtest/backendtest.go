// Package backendtest is the conformance check every backend's tests run
// against a real (or wire-faithful fake) peer: the signer must issue exactly
// what the approved template says, for the CSR's key, chained to the trust
// anchors it reports.
package backendtest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/csrgen"
	"github.com/meshca/broker/dn"
	"github.com/meshca/broker/verify"
)

// NewRequest builds an approved request the way the broker's policy does:
// a fresh key, a CSR carrying the SPIFFE ID, and a template with an empty
// subject, that URI SAN, TLS client and server usages and the given lifetime.
func NewRequest(t testing.TB, spiffeID string, ttl time.Duration) (*backends.Request, crypto.Signer) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return NewRequestForKey(t, key, spiffeID, ttl), key
}

// NewRequestForKey is NewRequest with the caller's key (RSA or ECDSA).
func NewRequestForKey(t testing.TB, key crypto.Signer, spiffeID string, ttl time.Duration) *backends.Request {
	t.Helper()
	u, err := url.Parse(spiffeID)
	if err != nil {
		t.Fatal(err)
	}
	der, err := csrgen.New(key, csrgen.Names{URIs: []*url.URL{u}})
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Second)
	return &backends.Request{
		CSR: csr,
		Template: &x509.Certificate{
			Subject:               pkix.Name{},
			URIs:                  []*url.URL{u},
			NotBefore:             now.Add(-time.Minute),
			NotAfter:              now.Add(ttl),
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			BasicConstraintsValid: true,
		},
	}
}

// CheckIssued asserts what the broker's verification step would: the leaf
// holds the CSR's key, exactly the template's URI SANs and no other names,
// is not a CA, does not outlive the template, and the chain verifies to
// the signer's trust anchors.
func CheckIssued(t testing.TB, s backends.Signer, req *backends.Request, chain []*x509.Certificate) {
	t.Helper()
	if len(chain) == 0 {
		t.Fatal("signer returned an empty chain")
	}
	leaf := chain[0]
	if !publicKeyEqual(leaf.PublicKey, req.CSR.PublicKey) {
		t.Errorf("leaf public key is not the CSR's")
	}
	if len(leaf.URIs) != len(req.Template.URIs) {
		t.Fatalf("leaf URIs %v, want %v", leaf.URIs, req.Template.URIs)
	}
	for i := range leaf.URIs {
		if leaf.URIs[i].String() != req.Template.URIs[i].String() {
			t.Errorf("leaf URI %d = %s, want %s", i, leaf.URIs[i], req.Template.URIs[i])
		}
	}
	if len(leaf.DNSNames) != len(req.Template.DNSNames) || len(leaf.IPAddresses) != 0 || len(leaf.EmailAddresses) != 0 {
		t.Errorf("leaf has unexpected names: dns=%v ip=%v email=%v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if leaf.IsCA {
		t.Errorf("leaf is a CA")
	}
	if leaf.NotAfter.After(req.Template.NotAfter.Add(time.Minute)) {
		t.Errorf("leaf NotAfter %v is later than the template's %v", leaf.NotAfter, req.Template.NotAfter)
	}
	anchors, err := s.TrustAnchors(context.Background())
	if err != nil {
		t.Fatalf("TrustAnchors: %v", err)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, a := range anchors {
		roots.AddCert(a)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("issued chain does not verify to the signer's trust anchors: %v", err)
	}
	// And everything the broker checks before a workload sees it: subject,
	// usages, NotBefore.
	if _, err := verify.Chain(req, chain, anchors, time.Now()); err != nil {
		t.Errorf("the broker's verification refuses what the signer issued: %v", err)
	}
}

// Run issues one certificate for each common key type and checks it.
func Run(t *testing.T, s backends.Signer, spiffeID string) {
	t.Helper()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for name, key := range map[string]crypto.Signer{"rsa2048": rsaKey, "ecdsa-p256": ecKey} {
		t.Run(name, func(t *testing.T) {
			req := NewRequestForKey(t, key, spiffeID, time.Hour)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			chain, err := s.Sign(ctx, req)
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			CheckIssued(t, s, req, chain)
		})
	}
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}

// WriteFile writes data to a new file in the test's temporary directory
// (a key, token or trust-anchor file a backend's configuration names) and
// returns its path.
func WriteFile(t testing.TB, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// QuietLogger discards a backend's logs in tests.
func QuietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// HostileSubject is a CSR subject no workload may have in its certificate.
type HostileSubject struct {
	Name string
	// RawSubject is the DER Name put into the CSR.
	RawSubject []byte
}

// HostileSubjects are subjects a compromised workload might put in its
// CSR hoping the PKI copies them: names that relying parties authorizing
// by DN (Kubernetes, Kafka, PostgreSQL) would read as another identity,
// and attribute types crypto/x509's parsed Name silently drops.
func HostileSubjects() []HostileSubject {
	str := func(tag int, s string) asn1.RawValue {
		return asn1.RawValue{Class: asn1.ClassUniversal, Tag: tag, Bytes: []byte(s)}
	}
	atv := func(oid asn1.ObjectIdentifier, v any) pkix.AttributeTypeAndValue {
		return pkix.AttributeTypeAndValue{Type: oid, Value: v}
	}
	var (
		cn    = asn1.ObjectIdentifier{2, 5, 4, 3}
		o     = asn1.ObjectIdentifier{2, 5, 4, 10}
		email = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}
		dc    = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 25}
		uid   = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 1}
	)
	mustDER := func(rdns pkix.RDNSequence) []byte {
		b, err := asn1.Marshal(rdns)
		if err != nil {
			panic(err)
		}
		return b
	}
	return []HostileSubject{
		{"CN=admin,O=system:masters", mustDER(pkix.RDNSequence{{atv(o, "system:masters")}, {atv(cn, "admin")}})},
		{"foreign SPIFFE ID in CN", mustDER(pkix.RDNSequence{{atv(cn, "spiffe://cluster.local/ns/other/sa/x")}})},
		{"emailAddress", mustDER(pkix.RDNSequence{{atv(email, str(asn1.TagIA5String, "admin@example.com"))}})},
		{"DC", mustDER(pkix.RDNSequence{{atv(dc, str(asn1.TagIA5String, "corp"))}, {atv(dc, str(asn1.TagIA5String, "example"))}})},
		{"UID", mustDER(pkix.RDNSequence{{atv(uid, str(asn1.TagUTF8String, "root"))}})},
		{"multi-valued RDN with empty O and CN", mustDER(pkix.RDNSequence{{atv(o, ""), atv(cn, "admin")}})},
		{"CN as T61String", mustDER(pkix.RDNSequence{{atv(cn, str(asn1.TagT61String, "admin"))}})},
	}
}

// CSR signs tmpl with key (a fresh P-256 key when nil) and parses it back:
// a CSR shaped as a test needs, beyond what the broker's own would say.
func CSR(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) *x509.CertificateRequest {
	t.Helper()
	if key == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		key = k
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

// NewRequestWithSubject is NewRequest with a CSR whose subject is raw
// (and whose template, as policy approves it, is still empty).
func NewRequestWithSubject(t testing.TB, spiffeID string, raw []byte, ttl time.Duration) *backends.Request {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	req := NewRequestForKey(t, key, spiffeID, ttl)
	u := req.Template.URIs[0]
	san, err := csrgen.SANExtension(csrgen.Names{URIs: []*url.URL{u}})
	if err != nil {
		t.Fatal(err)
	}
	req.CSR = CSR(t, key, &x509.CertificateRequest{RawSubject: raw, ExtraExtensions: []pkix.Extension{san}})
	return req
}

// RunHostileSubjects is the conformance case for PKIs that fill in what
// the broker leaves unsaid: each hostile subject goes to the signer in a
// CSR, bypassing policy (which refuses them first in the broker), with an
// approved empty subject. The signer may refuse it (ErrRefused), or issue
// the approved empty subject; if it issues the CSR's subject instead, the
// broker's verification must refuse the result. It never may pass with a
// subject that says something.
func RunHostileSubjects(t *testing.T, s backends.Signer, spiffeID string) {
	t.Helper()
	for _, h := range HostileSubjects() {
		t.Run(h.Name, func(t *testing.T) {
			req := NewRequestWithSubject(t, spiffeID, h.RawSubject, time.Hour)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			chain, err := s.Sign(ctx, req)
			if err != nil {
				if !errors.Is(err, backends.ErrRefused) {
					t.Fatalf("Sign: %v; want a certificate or ErrRefused", err)
				}
				t.Logf("refused (before calling the PKI, or on its answer): %v", err)
				return
			}
			anchors, err := s.TrustAnchors(ctx)
			if err != nil {
				t.Fatalf("TrustAnchors: %v", err)
			}
			valued, err := dn.Valued(chain[0].RawSubject)
			if err != nil {
				t.Fatalf("issued leaf subject: %v", err)
			}
			_, verr := verify.Chain(req, chain, anchors, time.Now())
			switch {
			case len(valued) > 0 && verr == nil:
				t.Fatalf("leaf carries subject [%s] and the broker's verification accepted it", dn.Describe(valued))
			case len(valued) > 0:
				t.Logf("the PKI copied [%s]; verification refused it: %v", dn.Describe(valued), verr)
			case verr != nil:
				t.Fatalf("leaf has the approved empty subject but verification failed: %v", verr)
			default:
				t.Logf("issued with the approved empty subject")
			}
		})
	}
}
