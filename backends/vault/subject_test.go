package vault

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
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/backends/backendtest"
)

const testID = "spiffe://cluster.local/ns/a/sa/b"

var (
	ecKey  = mustEC()
	rsaKey = mustRSA()
)

func mustEC() crypto.Signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

func mustRSA() crypto.Signer {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
}

func mustDER(t testing.TB, v any) []byte {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func kuExt(t testing.TB, ku x509.KeyUsage) pkix.Extension {
	var bits asn1.BitString
	for i := 0; i < 9; i++ {
		if ku&(1<<uint(i)) != 0 {
			bits.BitLength = i + 1
		}
	}
	bits.Bytes = make([]byte, (bits.BitLength+7)/8)
	for i := 0; i < bits.BitLength; i++ {
		if ku&(1<<uint(i)) != 0 {
			bits.Bytes[i/8] |= 0x80 >> uint(i%8)
		}
	}
	return pkix.Extension{Id: oidExtKeyUsage, Critical: true, Value: mustDER(t, bits)}
}

func ekuExt(t testing.TB, ekus ...x509.ExtKeyUsage) pkix.Extension {
	var oids []asn1.ObjectIdentifier
	for _, e := range ekus {
		oids = append(oids, extKeyUsageOIDs[e])
	}
	return pkix.Extension{Id: oidExtExtKeyUsage, Value: mustDER(t, oids)}
}

// request is an approved workload request (empty subject, the SPIFFE ID,
// TLS usages) whose CSR is built from csrTmpl with key.
func request(t testing.TB, key crypto.Signer, csrTmpl *x509.CertificateRequest) *backends.Request {
	t.Helper()
	req := backendtest.NewRequestForKey(t, key, testID, time.Hour)
	if csrTmpl == nil {
		return req
	}
	if csrTmpl.URIs == nil && csrTmpl.DNSNames == nil { // an empty, non-nil URIs: no SAN
		csrTmpl.URIs = req.Template.URIs
	}
	req.CSR = backendtest.CSR(t, key, csrTmpl)
	return req
}

func TestCheckVerbatim(t *testing.T) {
	u, _ := url.Parse(testID)
	other, _ := url.Parse("spiffe://cluster.local/ns/other/sa/x")
	emptyO := mustDER(t, pkix.RDNSequence{{{Type: asn1.ObjectIdentifier{2, 5, 4, 10}, Value: ""}}})
	otherName := mustDER(t, []asn1.RawValue{
		{Class: asn1.ClassContextSpecific, Tag: sanURI, Bytes: []byte(testID)},
		{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: mustDER(t, asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 20, 2, 3})},
	})
	tests := []struct {
		name string
		key  crypto.Signer
		csr  *x509.CertificateRequest
		want string // "" = accepted
	}{
		{"approved CSR", ecKey, nil, ""},
		{"the agent's empty O=", ecKey, &x509.CertificateRequest{RawSubject: emptyO}, ""},
		{"usages asked exactly as approved (RSA)", rsaKey, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{
			kuExt(t, x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment),
			ekuExt(t, x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth)}}, ""},
		{"ECDSA without keyEncipherment", ecKey, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{kuExt(t, x509.KeyUsageDigitalSignature)}}, ""},
		{"basicConstraints CA:false", ecKey, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{
			{Id: oidExtBasicConstraints, Value: mustDER(t, struct{}{})}}}, ""},

		{"CN=admin", ecKey, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "admin"}}, `subject [CN="admin"] (approved [])`},
		{"RSA without keyEncipherment", rsaKey, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{kuExt(t, x509.KeyUsageDigitalSignature)}},
			"key usage [DigitalSignature] (approved [DigitalSignature KeyEncipherment])"},
		{"keyCertSign and cRLSign", ecKey, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{
			kuExt(t, x509.KeyUsageDigitalSignature|x509.KeyUsageCertSign|x509.KeyUsageCRLSign)}}, "key usage [DigitalSignature CertSign CRLSign]"},
		{"key usage with no bit", ecKey, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{kuExt(t, 0)}}, "key usage [none]"},
		{"codeSigning", ecKey, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{
			ekuExt(t, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageCodeSigning)}},
			"extended key usage [ClientAuth CodeSigning ServerAuth] (approved [ClientAuth ServerAuth])"},
		{"serverAuth only", ecKey, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{ekuExt(t, x509.ExtKeyUsageServerAuth)}}, "extended key usage [ServerAuth]"},
		{"CA:true", ecKey, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{
			{Id: oidExtBasicConstraints, Critical: true, Value: mustDER(t, struct{ IsCA bool }{true})}}}, "basicConstraints CA:true"},
		{"nameConstraints", ecKey, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{
			{Id: asn1.ObjectIdentifier{2, 5, 29, 30}, Value: []byte{0x30, 0}}}}, "extension nameConstraints (2.5.29.30)"},
		{"unknown extension", ecKey, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{
			{Id: asn1.ObjectIdentifier{1, 2, 3, 4}, Value: []byte{5, 0}}}}, "extension 1.2.3.4"},
		{"another SPIFFE ID too", ecKey, &x509.CertificateRequest{URIs: []*url.URL{u, other}}, "subjectAltName [URI:" + testID + " URI:spiffe://cluster.local/ns/other/sa/x] (approved [URI:" + testID + "])"},
		{"a DNS name too", ecKey, &x509.CertificateRequest{URIs: []*url.URL{u}, DNSNames: []string{"admin"}}, "subjectAltName [DNS:admin"},
		{"an otherName Go does not parse", ecKey, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{
			{Id: oidExtSubjectAltName, Critical: true, Value: otherName}}}, "subjectAltName: a name of kind 0 (otherName"},
		{"no SAN", ecKey, &x509.CertificateRequest{URIs: []*url.URL{}}, "no subjectAltName (approved [URI:" + testID + "])"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := request(t, tc.key, tc.csr)
			err := checkVerbatim(req)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("accepted; want a refusal naming %q", tc.want)
			case tc.want != "" && (!errors.Is(err, backends.ErrRefused) || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error = %v\nwant ErrRefused naming %q", err, tc.want)
			}
		})
	}

	t.Run("every hostile subject", func(t *testing.T) {
		for _, h := range backendtest.HostileSubjects() {
			req := backendtest.NewRequestWithSubject(t, testID, h.RawSubject, time.Hour)
			if err := checkVerbatim(req); !errors.Is(err, backends.ErrRefused) || !strings.Contains(err.Error(), "subject [") {
				t.Errorf("%s: %v", h.Name, err)
			}
		}
	})

	t.Run("serving certificate", func(t *testing.T) {
		req := request(t, ecKey, &x509.CertificateRequest{DNSNames: []string{"istiod.istio-system.svc", "istiod"}})
		req.Template.URIs = nil
		req.Template.DNSNames = []string{"istiod", "istiod.istio-system.svc"}
		if err := checkVerbatim(req); err != nil {
			t.Fatal(err)
		}
		req.Template.DNSNames = []string{"istiod"}
		if err := checkVerbatim(req); err == nil {
			t.Fatal("a DNS name beyond the approved ones was accepted")
		}
	})
}

func certWithSubject(t testing.TB, subject pkix.Name) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: subject, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, ecKey.Public(), ecKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func TestCheckIssuedSubject(t *testing.T) {
	approved := backendtest.NewRequestForKey(t, ecKey, testID, time.Hour).Template
	tests := []struct {
		name    string
		subject pkix.Name
		mode    string
		want    string
	}{
		{"empty", pkix.Name{}, modeSign, ""},
		{"empty O", pkix.Name{Organization: []string{""}}, modeSign, ""},
		{"CN copied by use_csr_common_name", pkix.Name{CommonName: "admin"}, modeSign, `Vault issued subject [CN="admin"], approved [] (CN: the role has use_csr_common_name=true`},
		{"role organization and ou", pkix.Name{Organization: []string{"corp"}, OrganizationalUnit: []string{"mesh"}}, modeSign, "O: the role's organization (leave it empty); OU: the role's ou"},
		{"serial number", pkix.Name{SerialNumber: "42"}, modeSign, "allowed_serial_numbers"},
		{"UID", pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{{Type: asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 1}, Value: "root"}}}, modeSign, "allowed_user_ids"},
		{"sign-verbatim", pkix.Name{CommonName: "admin"}, modeSignVerbatim, "CN: sign-verbatim copied it from the CSR"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := checkIssuedSubject(certWithSubject(t, tc.subject), approved, tc.mode)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (!errors.Is(err, backends.ErrRefused) || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error = %v\nwant ErrRefused naming %q", err, tc.want)
			}
		})
	}
}

// TestSignVerbatimRefusesBeforeAskingVault: a CSR that sign-verbatim would
// copy into something other than the approved certificate never reaches
// Vault; an approved one does.
func TestSignVerbatimRefusesBeforeAskingVault(t *testing.T) {
	f := &fakeVault{t: t, pki: newTestPKI(t)}
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/pki/sign-verbatim/istio" {
			calls.Add(1)
			r.URL.Path = "/v1/pki/sign/istio"
		}
		f.ServeHTTP(w, r)
	}))
	defer srv.Close()
	s, err := newSigner(context.Background(), Config{Address: srv.URL, Role: "istio", Mode: modeSignVerbatim,
		Auth: AuthConfig{Method: "token", Token: &TokenAuth{Token: "x"}}}, backendtest.QuietLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, h := range backendtest.HostileSubjects() {
		req := backendtest.NewRequestWithSubject(t, testID, h.RawSubject, time.Hour)
		if _, err := s.Sign(context.Background(), req); !errors.Is(err, backends.ErrRefused) {
			t.Errorf("%s: Sign = %v, want ErrRefused", h.Name, err)
		}
	}
	req := request(t, ecKey, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{kuExt(t, x509.KeyUsageCertSign)}})
	_, err = s.Sign(context.Background(), req)
	if !errors.Is(err, backends.ErrRefused) || !strings.Contains(err.Error(), "vault: signing at pki/sign-verbatim/istio: ") {
		t.Errorf("Sign = %v, want ErrRefused naming the path", err)
	}
	t.Logf("as the broker reports it: %v", err)
	if n := calls.Load(); n != 0 {
		t.Fatalf("%d calls reached Vault", n)
	}
	if _, err := s.Sign(context.Background(), request(t, ecKey, nil)); err != nil {
		t.Fatalf("approved request: %v", err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d calls reached Vault for the approved request, want 1", n)
	}
}
