package gcpcas

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode/utf16"

	"cloud.google.com/go/security/privateca/apiv1/privatecapb"
	"google.golang.org/protobuf/proto"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/backends/backendtest"
	"github.com/meshca/broker/csrgen"
	fakecas "github.com/meshca/broker/integration/fakes/gcpcas"
	"github.com/meshca/broker/verify"
)

const testID = "spiffe://cluster.local/ns/default/sa/decide"

var (
	oidEmail = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}
	oidDC    = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 25}
	oidUID   = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 1}
)

// str is an attribute value with an explicit string type.
func str(tag int, s string) asn1.RawValue {
	return asn1.RawValue{Class: asn1.ClassUniversal, Tag: tag, Bytes: []byte(s)}
}

func bmp(s string) asn1.RawValue {
	var b []byte
	for _, r := range utf16.Encode([]rune(s)) {
		b = append(b, byte(r>>8), byte(r))
	}
	return asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagBMPString, Bytes: b}
}

func atv(oid asn1.ObjectIdentifier, v any) pkix.AttributeTypeAndValue {
	return pkix.AttributeTypeAndValue{Type: oid, Value: v}
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func rawName(t testing.TB, rdns ...pkix.RelativeDistinguishedNameSET) []byte {
	return mustMarshal(t, pkix.RDNSequence(rdns))
}

// GeneralNames, as context-tagged raw values.
func gnURI(s string) asn1.RawValue {
	return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: sanURI, Bytes: []byte(s)}
}

func gnOtherName(t testing.TB, upn string) asn1.RawValue {
	inner := mustMarshal(t, asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 20, 2, 3})
	inner = append(inner, mustMarshal(t, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: mustMarshal(t, str(asn1.TagUTF8String, upn))})...)
	return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: inner}
}

func gnDirectoryName(t testing.TB, name []byte) asn1.RawValue {
	return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: name}
}

func gnRegisteredID(t testing.TB, oid asn1.ObjectIdentifier) asn1.RawValue {
	var rv asn1.RawValue
	if _, err := asn1.Unmarshal(mustMarshal(t, oid), &rv); err != nil {
		t.Fatal(err)
	}
	return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 8, Bytes: rv.Bytes}
}

func sanExtension(t testing.TB, critical bool, names ...asn1.RawValue) pkix.Extension {
	return pkix.Extension{Id: oidSubjectAltName, Critical: critical, Value: mustMarshal(t, names)}
}

// handCSR builds and signs a CSR from raw parts, for shapes
// crypto/x509 will not write: several attribute values, odd attributes.
func handCSR(t testing.TB, key *ecdsa.PrivateKey, subject []byte, attributes ...asn1.RawValue) *x509.CertificateRequest {
	t.Helper()
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	tbs := mustMarshal(t, struct {
		Version    int
		Subject    asn1.RawValue
		PublicKey  asn1.RawValue
		Attributes []asn1.RawValue `asn1:"tag:0"`
	}{0, asn1.RawValue{FullBytes: subject}, asn1.RawValue{FullBytes: spki}, attributes})
	digest := sha256.Sum256(tbs)
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	der := mustMarshal(t, struct {
		TBS       asn1.RawValue
		Algorithm pkix.AlgorithmIdentifier
		Signature asn1.BitString
	}{asn1.RawValue{FullBytes: tbs}, pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}}, asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)}})
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatal(err)
	}
	return csr
}

// extensionRequest is a CSR attribute requesting extensions; each list is
// one value of the attribute.
func extensionRequest(t testing.TB, values ...[]pkix.Extension) asn1.RawValue {
	var vals []asn1.RawValue
	for _, v := range values {
		vals = append(vals, asn1.RawValue{FullBytes: mustMarshal(t, v)})
	}
	return asn1.RawValue{FullBytes: mustMarshal(t, struct {
		Type   asn1.ObjectIdentifier
		Values []asn1.RawValue `asn1:"set"`
	}{oidExtensionRequest, vals})}
}

// TestPemCSROrConfig is the decision table: pem_csr only when everything
// CA Service could copy from the CSR is byte for byte what was approved.
// Each case is also issued by the fake (which copies a pem_csr's raw
// subject, SANs and extensions as CA Service does) and the result must
// pass the broker's verification.
func TestPemCSROrConfig(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(testID)
	uris := []*url.URL{u}
	cn := asn1.ObjectIdentifier{2, 5, 4, 3}
	o := asn1.ObjectIdentifier{2, 5, 4, 10}
	approvedSAN := sanExtension(t, false, gnURI(testID))
	kuExt := pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 15}, Critical: true, Value: mustMarshal(t, asn1.BitString{Bytes: []byte{0x06}, BitLength: 7})}
	csrWith := func(tmpl x509.CertificateRequest) func(t *testing.T) *x509.CertificateRequest {
		return func(t *testing.T) *x509.CertificateRequest { return backendtest.CSR(t, key, &tmpl) }
	}
	tests := []struct {
		name     string
		csr      func(t *testing.T) *x509.CertificateRequest
		approved pkix.Name // the template's subject; empty unless said
		template func(t *x509.Certificate)
		wantPem  bool
		why      string // in the reason for config mode
	}{
		{name: "empty subject, the approved URI", csr: csrWith(x509.CertificateRequest{URIs: uris}), wantPem: true},
		{name: "empty subject, SAN marked critical (the broker's own CSRs)", csr: func(t *testing.T) *x509.CertificateRequest {
			der, err := csrgen.New(key, csrgen.Names{URIs: uris})
			if err != nil {
				t.Fatal(err)
			}
			csr, _ := x509.ParseCertificateRequest(der)
			return csr
		}, wantPem: true},
		{name: "serving certificate: DNS names in another order", template: func(c *x509.Certificate) {
			c.URIs, c.DNSNames = nil, []string{"istiod.istio-system.svc", "meshca-broker.istio-system.svc"}
		}, csr: func(t *testing.T) *x509.CertificateRequest {
			der, err := csrgen.New(key, csrgen.Names{DNSNames: []string{"meshca-broker.istio-system.svc", "istiod.istio-system.svc"}})
			if err != nil {
				t.Fatal(err)
			}
			csr, _ := x509.ParseCertificateRequest(der)
			return csr
		}, wantPem: true},
		{name: "istio agent's O= (empty value) is not byte-equal", csr: csrWith(x509.CertificateRequest{Subject: pkix.Name{Organization: []string{""}}, URIs: uris}), why: "byte-equal"},
		{name: "CN", csr: csrWith(x509.CertificateRequest{Subject: pkix.Name{CommonName: "admin"}, URIs: uris}), why: `CN="admin"`},
		{name: "CN=admin,O=system:masters", csr: csrWith(x509.CertificateRequest{Subject: pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}}, URIs: uris}), why: "system:masters"},
		{name: "emailAddress (dropped by pkix.Name)", csr: csrWith(x509.CertificateRequest{RawSubject: rawName(t, pkix.RelativeDistinguishedNameSET{atv(oidEmail, str(asn1.TagIA5String, "admin@example.com"))}), URIs: uris}), why: "emailAddress"},
		{name: "DC (dropped by pkix.Name)", csr: csrWith(x509.CertificateRequest{RawSubject: rawName(t, pkix.RelativeDistinguishedNameSET{atv(oidDC, str(asn1.TagIA5String, "corp"))}), URIs: uris}), why: "DC"},
		{name: "UID (dropped by pkix.Name)", csr: csrWith(x509.CertificateRequest{RawSubject: rawName(t, pkix.RelativeDistinguishedNameSET{atv(oidUID, str(asn1.TagUTF8String, "root"))}), URIs: uris}), why: "UID"},
		{name: "multi-valued RDN: empty O and CN", csr: csrWith(x509.CertificateRequest{RawSubject: rawName(t, pkix.RelativeDistinguishedNameSET{atv(o, ""), atv(cn, "admin")}), URIs: uris}), why: "CN"},
		{name: "CN as T61String", csr: csrWith(x509.CertificateRequest{RawSubject: rawName(t, pkix.RelativeDistinguishedNameSET{atv(cn, str(asn1.TagT61String, "admin"))}), URIs: uris}), why: "CN"},
		{name: "CN as BMPString", csr: csrWith(x509.CertificateRequest{RawSubject: rawName(t, pkix.RelativeDistinguishedNameSET{atv(cn, bmp("admin"))}), URIs: uris}), why: "CN"},
		{name: "approved CN, same bytes", approved: pkix.Name{CommonName: "b"}, csr: csrWith(x509.CertificateRequest{Subject: pkix.Name{CommonName: "b"}, URIs: uris}), wantPem: true},
		{name: "approved CN, CSR's as UTF8String", approved: pkix.Name{CommonName: "b"}, csr: csrWith(x509.CertificateRequest{RawSubject: rawName(t, pkix.RelativeDistinguishedNameSET{atv(cn, str(asn1.TagUTF8String, "b"))}), URIs: uris}), why: "byte-equal"},
		{name: "extra DNS SAN", csr: csrWith(x509.CertificateRequest{URIs: uris, DNSNames: []string{"admin.example.com"}}), why: "dNSName"},
		{name: "extra IP SAN", csr: csrWith(x509.CertificateRequest{URIs: uris, IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}), why: "iPAddress"},
		{name: "extra email SAN", csr: csrWith(x509.CertificateRequest{URIs: uris, EmailAddresses: []string{"admin@example.com"}}), why: "rfc822Name"},
		{name: "another SPIFFE ID", csr: csrWith(x509.CertificateRequest{URIs: []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/other/sa/x"}}}), why: "uniformResourceIdentifier"},
		{name: "the approved URI twice", csr: csrWith(x509.CertificateRequest{ExtraExtensions: []pkix.Extension{sanExtension(t, false, gnURI(testID), gnURI(testID))}}), why: "approved"},
		{name: "otherName (UPN) beside the URI", csr: csrWith(x509.CertificateRequest{ExtraExtensions: []pkix.Extension{sanExtension(t, false, gnURI(testID), gnOtherName(t, "admin@corp.example"))}}), why: "otherName"},
		{name: "directoryName beside the URI", csr: csrWith(x509.CertificateRequest{ExtraExtensions: []pkix.Extension{sanExtension(t, false, gnURI(testID), gnDirectoryName(t, rawName(t, pkix.RelativeDistinguishedNameSET{atv(cn, "admin")})))}}), why: "directoryName"},
		{name: "registeredID beside the URI", csr: csrWith(x509.CertificateRequest{ExtraExtensions: []pkix.Extension{sanExtension(t, false, gnURI(testID), gnRegisteredID(t, asn1.ObjectIdentifier{1, 2, 3, 4}))}}), why: "registeredID"},
		{name: "key usage extension", csr: csrWith(x509.CertificateRequest{URIs: uris, ExtraExtensions: []pkix.Extension{kuExt}}), why: "keyUsage"},
		{name: "basic constraints CA:true", csr: csrWith(x509.CertificateRequest{URIs: uris, ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: mustMarshal(t, struct{ IsCA bool }{true})}}}), why: "basicConstraints"},
		{name: "unknown extension", csr: csrWith(x509.CertificateRequest{URIs: uris, ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Value: []byte{0x05, 0x00}}}}), why: "1.3.6.1.4.1.99999.1"},
		{name: "no SAN at all", csr: csrWith(x509.CertificateRequest{}), why: "no subjectAltName"},
		{name: "second extensionRequest value, unseen by crypto/x509", csr: func(t *testing.T) *x509.CertificateRequest {
			return handCSR(t, key, mustMarshal(t, pkix.RDNSequence{}), extensionRequest(t, []pkix.Extension{approvedSAN}, []pkix.Extension{kuExt}))
		}, why: "2 values"},
		{name: "hand-made, exactly the approved", csr: func(t *testing.T) *x509.CertificateRequest {
			return handCSR(t, key, mustMarshal(t, pkix.RDNSequence{}), extensionRequest(t, []pkix.Extension{approvedSAN}))
		}, wantPem: true},
		{name: "challengePassword attribute", csr: func(t *testing.T) *x509.CertificateRequest {
			pw := asn1.RawValue{FullBytes: mustMarshal(t, struct {
				Type   asn1.ObjectIdentifier
				Values []asn1.RawValue `asn1:"set"`
			}{asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 7}, []asn1.RawValue{str(asn1.TagUTF8String, "secret")}})}
			return handCSR(t, key, mustMarshal(t, pkix.RDNSequence{}), extensionRequest(t, []pkix.Extension{approvedSAN}), pw)
		}, why: "2 attributes"},
	}

	f, err := fakecas.Start(fakecas.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	s, err := New(context.Background(), Config{CaPool: f.PoolName, Endpoint: f.Addr, Insecure: true}, backendtest.QuietLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	anchors, err := s.TrustAnchors(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := backendtest.NewRequestForKey(t, key, testID, time.Hour)
			req.CSR = tt.csr(t)
			req.Template.Subject = tt.approved
			if tt.template != nil {
				tt.template(req.Template)
			}
			why := csrMismatch(req)
			if gotPem := why == nil; gotPem != tt.wantPem {
				t.Fatalf("pem_csr = %v (reason: %v), want %v", gotPem, why, tt.wantPem)
			}
			if why != nil && !strings.Contains(why.Error(), tt.why) {
				t.Errorf("reason %q does not mention %q", why, tt.why)
			}
			// Over the wire: the mode chosen, and what the fake issues from
			// it passes verification.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			chain, err := s.Sign(ctx, req)
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			sent := f.LastCreateRequest().GetCertificate()
			if (sent.GetPemCsr() != "") != tt.wantPem || (sent.GetConfig() != nil) == tt.wantPem {
				t.Errorf("sent pem_csr=%v config=%v, want pem_csr=%v", sent.GetPemCsr() != "", sent.GetConfig() != nil, tt.wantPem)
			}
			if _, err := verify.Chain(req, chain, anchors, time.Now()); err != nil {
				t.Errorf("verification refuses what was issued: %v", err)
			}
		})
	}
}

func TestCertificateConfig(t *testing.T) {
	req, _ := backendtest.NewRequest(t, testID, time.Hour)
	tests := []struct {
		name    string
		subject pkix.Name
		raw     []byte
		check   func(t *testing.T, s *certificateConfigResult)
		wantErr string
	}{
		{name: "empty subject is an empty Subject message beside the SANs", check: func(t *testing.T, r *certificateConfigResult) {
			if s := r.subject; s == nil || !proto.Equal(s, &privatecapb.Subject{}) {
				t.Errorf("subject %v, want an empty message", s)
			}
			if got := r.uris; len(got) != 1 || got[0] != testID {
				t.Errorf("URIs %v", got)
			}
		}},
		{name: "empty-valued attributes say nothing", subject: pkix.Name{Organization: []string{""}}, check: func(t *testing.T, r *certificateConfigResult) {
			if !proto.Equal(r.subject, &privatecapb.Subject{}) {
				t.Errorf("subject %v, want empty", r.subject)
			}
		}},
		{name: "CN and O", subject: pkix.Name{CommonName: "b", Organization: []string{"mesh"}}, check: func(t *testing.T, r *certificateConfigResult) {
			if r.subject.GetCommonName() != "b" || r.subject.GetOrganization() != "mesh" {
				t.Errorf("subject %v", r.subject)
			}
		}},
		{name: "template RawSubject wins over Subject", subject: pkix.Name{CommonName: "ignored"}, raw: rawName(t, pkix.RelativeDistinguishedNameSET{atv(asn1.ObjectIdentifier{2, 5, 4, 3}, "raw")}), check: func(t *testing.T, r *certificateConfigResult) {
			if r.subject.GetCommonName() != "raw" {
				t.Errorf("subject %v", r.subject)
			}
		}},
		{name: "two organizations", subject: pkix.Name{Organization: []string{"a", "b"}}, wantErr: "cannot be expressed"},
		{name: "emailAddress", raw: rawName(t, pkix.RelativeDistinguishedNameSET{atv(oidEmail, str(asn1.TagIA5String, "a@b"))}), wantErr: "cannot be expressed"},
		{name: "BMPString CN", raw: rawName(t, pkix.RelativeDistinguishedNameSET{atv(asn1.ObjectIdentifier{2, 5, 4, 3}, bmp("b"))}), wantErr: "cannot be expressed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := *req
			tmpl := *req.Template
			tmpl.Subject, tmpl.RawSubject = tt.subject, tt.raw
			tmpl.KeyUsage = x509.KeyUsageDigitalSignature
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
			r.Template = &tmpl
			cfg, err := certificateConfig(&r)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ku := cfg.GetX509Config().GetKeyUsage()
			if !ku.GetBaseKeyUsage().GetDigitalSignature() || ku.GetBaseKeyUsage().GetKeyEncipherment() || !ku.GetExtendedKeyUsage().GetClientAuth() || ku.GetExtendedKeyUsage().GetServerAuth() {
				t.Errorf("key usage %v", ku)
			}
			if cfg.GetX509Config().GetCaOptions() == nil || cfg.GetX509Config().GetCaOptions().GetIsCa() {
				t.Error("is_ca not explicitly false")
			}
			if !strings.Contains(string(cfg.GetPublicKey().GetKey()), "BEGIN PUBLIC KEY") {
				t.Error("public key not PEM")
			}
			tt.check(t, &certificateConfigResult{subject: cfg.GetSubjectConfig().GetSubject(), uris: cfg.GetSubjectConfig().GetSubjectAltName().GetUris()})
		})
	}
	t.Run("neither subject nor SAN", func(t *testing.T) {
		r := *req
		tmpl := *req.Template
		tmpl.URIs = nil
		r.Template = &tmpl
		if _, err := certificateConfig(&r); err == nil || !strings.Contains(err.Error(), "requires one") {
			t.Errorf("err = %v", err)
		}
	})
}

type certificateConfigResult struct {
	subject *privatecapb.Subject
	uris    []string
}

// TestRequestIDs: the same Request, however often and however it is
// rebuilt, has the same request and certificate IDs; any change to what
// is issued changes them.
func TestRequestIDs(t *testing.T) {
	s := &Signer{cfg: Config{Project: "p", Location: "l", CaPool: "pool"}, log: backendtest.QuietLogger()}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	base := backendtest.NewRequestForKey(t, key, testID, time.Hour)
	ids := func(t *testing.T, s *Signer, req *backends.Request) (string, string) {
		t.Helper()
		c, err := s.createRequest(req)
		if err != nil {
			t.Fatal(err)
		}
		return c.RequestId, c.CertificateId
	}
	// rebuilt copies everything, URLs and slices included, as a broker
	// re-deriving the approved template for an agent's retry would.
	rebuilt := func(change func(r *backends.Request)) *backends.Request {
		tmpl := *base.Template
		tmpl.URIs = nil
		for _, u := range base.Template.URIs {
			c := *u
			tmpl.URIs = append(tmpl.URIs, &c)
		}
		tmpl.ExtKeyUsage = append([]x509.ExtKeyUsage(nil), base.Template.ExtKeyUsage...)
		csr, err := x509.ParseCertificateRequest(bytes.Clone(base.CSR.Raw))
		if err != nil {
			t.Fatal(err)
		}
		r := &backends.Request{CSR: csr, Template: &tmpl}
		if change != nil {
			change(r)
		}
		return r
	}
	reqID, certID := ids(t, s, base)
	if len(certID) > 63 || !strings.HasPrefix(certID, "meshca-") {
		t.Errorf("certificate_id %q", certID)
	}
	for i := 0; i < 3; i++ {
		if r, c := ids(t, s, base); r != reqID || c != certID {
			t.Fatal("the same Request gave different IDs")
		}
	}
	if r, c := ids(t, s, rebuilt(nil)); r != reqID || c != certID {
		t.Fatal("an equal Request, rebuilt, gave different IDs")
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherCSR := backendtest.NewRequestForKey(t, other, testID, time.Hour).CSR
	changes := []struct {
		name   string
		change func(r *backends.Request)
		signer *Signer
	}{
		{name: "NotAfter", change: func(r *backends.Request) { r.Template.NotAfter = r.Template.NotAfter.Add(time.Second) }},
		{name: "NotBefore", change: func(r *backends.Request) { r.Template.NotBefore = r.Template.NotBefore.Add(-time.Second) }},
		{name: "identity", change: func(r *backends.Request) { r.Template.URIs[0].Path = "/ns/default/sa/other" }},
		{name: "DNS name", change: func(r *backends.Request) { r.Template.DNSNames = []string{"x.example"} }},
		{name: "subject", change: func(r *backends.Request) { r.Template.Subject = pkix.Name{CommonName: "x"} }},
		{name: "key usage", change: func(r *backends.Request) { r.Template.KeyUsage = x509.KeyUsageDigitalSignature }},
		{name: "ext key usage", change: func(r *backends.Request) { r.Template.ExtKeyUsage = r.Template.ExtKeyUsage[:1] }},
		{name: "CSR", change: func(r *backends.Request) { r.CSR = otherCSR }},
		{name: "issuing CA", signer: &Signer{cfg: Config{Project: "p", Location: "l", CaPool: "pool", CaID: "ca-2"}, log: backendtest.QuietLogger()}},
		{name: "certificate template", signer: &Signer{cfg: Config{Project: "p", Location: "l", CaPool: "pool", CertificateTemplate: "t"}, log: backendtest.QuietLogger()}},
	}
	for _, tt := range changes {
		t.Run(tt.name, func(t *testing.T) {
			signer := s
			if tt.signer != nil {
				signer = tt.signer
			}
			if r, c := ids(t, signer, rebuilt(tt.change)); r == reqID || c == certID {
				t.Errorf("a different request kept the IDs")
			}
		})
	}
}
