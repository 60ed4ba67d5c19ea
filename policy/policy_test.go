package policy

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshca/broker/authn"
	"github.com/meshca/broker/dn"
)

const caller = "spiffe://cluster.local/ns/shop/sa/cart"

var (
	ecKey  = mustEC(elliptic.P256())
	rsaKey = mustRSA(2048)
)

func mustEC(c elliptic.Curve) crypto.Signer {
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

func mustRSA(bits int) crypto.Signer {
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		panic(err)
	}
	return k
}

func csrPEM(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) string {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func uris(ss ...string) []*url.URL {
	var out []*url.URL
	for _, s := range ss {
		u, err := url.Parse(s)
		if err != nil {
			panic(err)
		}
		out = append(out, u)
	}
	return out
}

func ext(t testing.TB, oid asn1.ObjectIdentifier, val any) pkix.Extension {
	t.Helper()
	b, err := asn1.Marshal(val)
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: oid, Value: b}
}

func identity() *authn.Identity {
	return &authn.Identity{ID: spiffeid.RequireFromString(caller), Namespace: "shop", ServiceAccount: "cart"}
}

func newPolicy(t testing.TB, mod func(*Config)) *Policy {
	t.Helper()
	cfg := Defaults()
	cfg.TrustDomainAliases = []spiffeid.TrustDomain{spiffeid.RequireTrustDomainFromString("old.example")}
	if mod != nil {
		mod(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAuthorizeRefusesHostileRequests(t *testing.T) {
	good := func(t *testing.T) string { return csrPEM(t, ecKey, &x509.CertificateRequest{URIs: uris(caller)}) }
	sanWithOtherName := func(t *testing.T) pkix.Extension {
		// A SAN holding an otherName (tag 0): Go's parser drops it, so
		// it must be caught on the raw extension.
		other := asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: []byte{0x06, 0x03, 0x2b, 0x06, 0x01, 0xa0, 0x03, 0x0c, 0x01, 0x78}}
		uri := asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(caller)}
		return ext(t, oidExtSubjectAltName, []asn1.RawValue{uri, other})
	}
	cases := []struct {
		name     string
		csr      func(t *testing.T) string
		validity int64
		md       *structpb.Struct
		want     error
		mention  string
	}{
		{"empty csr", func(*testing.T) string { return "" }, 0, nil, ErrInvalid, "csr is empty"},
		{"not PEM", func(*testing.T) string { return "hello" }, 0, nil, ErrInvalid, "not PEM"},
		{"wrong PEM type", func(t *testing.T) string {
			return strings.Replace(good(t), "CERTIFICATE REQUEST", "CERTIFICATE", 2)
		}, 0, nil, ErrInvalid, `"CERTIFICATE"`},
		{"garbage DER", func(*testing.T) string {
			return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{0x30, 0x03, 1, 2, 3}}))
		}, 0, nil, ErrInvalid, "does not parse"},
		{"trailing data", func(t *testing.T) string { return good(t) + "junk" }, 0, nil, ErrInvalid, "after the PEM block"},
		{"two CSRs", func(t *testing.T) string { return good(t) + good(t) }, 0, nil, ErrInvalid, "after the PEM block"},
		{"oversized csr", func(t *testing.T) string { return good(t) + strings.Repeat(" ", 20000) }, 0, nil, ErrInvalid, "more than the"},
		{"bad signature", func(t *testing.T) string {
			der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: uris(caller)}, ecKey)
			der[len(der)-3] ^= 0xff
			return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
		}, 0, nil, ErrInvalid, ""},
		{"another workload's ID", func(t *testing.T) string {
			return csrPEM(t, ecKey, &x509.CertificateRequest{URIs: uris("spiffe://cluster.local/ns/shop/sa/payments")})
		}, 0, nil, ErrDenied, "ns/shop/sa/payments"},
		{"another namespace", func(t *testing.T) string {
			return csrPEM(t, ecKey, &x509.CertificateRequest{URIs: uris("spiffe://cluster.local/ns/kube-system/sa/cart")})
		}, 0, nil, ErrDenied, "kube-system"},
		{"foreign trust domain", func(t *testing.T) string {
			return csrPEM(t, ecKey, &x509.CertificateRequest{URIs: uris("spiffe://evil.example/ns/shop/sa/cart")})
		}, 0, nil, ErrDenied, "evil.example"},
		{"own ID plus another", func(t *testing.T) string {
			return csrPEM(t, ecKey, &x509.CertificateRequest{URIs: uris(caller, "spiffe://cluster.local/ns/shop/sa/admin")})
		}, 0, nil, ErrDenied, "URI SANs"},
		{"own ID with query", func(t *testing.T) string {
			return csrPEM(t, ecKey, &x509.CertificateRequest{URIs: uris(caller + "?x=1")})
		}, 0, nil, ErrDenied, "URI SAN"},
		{"own ID with port", func(t *testing.T) string {
			return csrPEM(t, ecKey, &x509.CertificateRequest{URIs: uris("spiffe://cluster.local:443/ns/shop/sa/cart")})
		}, 0, nil, ErrDenied, "URI SAN"},
		{"uppercase trust domain", func(t *testing.T) string {
			return csrPEM(t, ecKey, &x509.CertificateRequest{URIs: uris("spiffe://CLUSTER.local/ns/shop/sa/cart")})
		}, 0, nil, ErrDenied, "URI SAN"},
		{"https URI", func(t *testing.T) string {
			return csrPEM(t, ecKey, &x509.CertificateRequest{URIs: uris("https://cluster.local/ns/shop/sa/cart")})
		}, 0, nil, ErrDenied, "URI SAN"},
		{"path suffix", func(t *testing.T) string {
			return csrPEM(t, ecKey, &x509.CertificateRequest{URIs: uris(caller + "/extra")})
		}, 0, nil, ErrDenied, "URI SAN"},
		{"DNS name", func(t *testing.T) string {
			return csrPEM(t, ecKey, &x509.CertificateRequest{URIs: uris(caller), DNSNames: []string{"payments.shop.svc"}})
		}, 0, nil, ErrDenied, "DNS names"},
		{"IP address", func(t *testing.T) string {
			return csrPEM(t, ecKey, &x509.CertificateRequest{IPAddresses: []net.IP{net.ParseIP("10.0.0.1")}})
		}, 0, nil, ErrDenied, "IP addresses"},
		{"email", func(t *testing.T) string {
			return csrPEM(t, ecKey, &x509.CertificateRequest{EmailAddresses: []string{"root@example.com"}})
		}, 0, nil, ErrDenied, "email"},
		{"otherName SAN", func(t *testing.T) string {
			return csrPEM(t, ecKey, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{sanWithOtherName(t)}})
		}, 0, nil, ErrDenied, "kind 0"},
		{"CA true", func(t *testing.T) string {
			bc := ext(t, oidExtBasicConstraints, struct {
				IsCA bool `asn1:"optional"`
			}{true})
			return csrPEM(t, ecKey, &x509.CertificateRequest{URIs: uris(caller), ExtraExtensions: []pkix.Extension{bc}})
		}, 0, nil, ErrDenied, "CA:true"},
		{"unknown extension", func(t *testing.T) string {
			e := ext(t, asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, "x")
			return csrPEM(t, ecKey, &x509.CertificateRequest{URIs: uris(caller), ExtraExtensions: []pkix.Extension{e}})
		}, 0, nil, ErrDenied, "1.3.6.1.4.1.99999.1"},
		{"name constraints extension", func(t *testing.T) string {
			e := pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 30}, Value: []byte{0x30, 0x00}}
			return csrPEM(t, ecKey, &x509.CertificateRequest{URIs: uris(caller), ExtraExtensions: []pkix.Extension{e}})
		}, 0, nil, ErrDenied, "2.5.29.30"},
		{"keyCertSign and cRLSign requested", func(t *testing.T) string {
			e := pkix.Extension{Id: oidExtKeyUsage, Value: []byte{0x03, 0x02, 0x01, 0x06}}
			return csrPEM(t, ecKey, &x509.CertificateRequest{URIs: uris(caller), ExtraExtensions: []pkix.Extension{e}})
		}, 0, nil, ErrDenied, "keyCertSign, cRLSign"},
		{"keyAgreement requested", func(t *testing.T) string {
			e := pkix.Extension{Id: oidExtKeyUsage, Value: []byte{0x03, 0x02, 0x03, 0x08}}
			return csrPEM(t, ecKey, &x509.CertificateRequest{URIs: uris(caller), ExtraExtensions: []pkix.Extension{e}})
		}, 0, nil, ErrDenied, "keyAgreement"},
		{"malformed key usage", func(t *testing.T) string {
			e := pkix.Extension{Id: oidExtKeyUsage, Value: []byte{0x04, 0x01, 0x00}}
			return csrPEM(t, ecKey, &x509.CertificateRequest{URIs: uris(caller), ExtraExtensions: []pkix.Extension{e}})
		}, 0, nil, ErrInvalid, "key usage extension is malformed"},
		{"codeSigning requested", func(t *testing.T) string {
			e := ext(t, oidExtExtKeyUsage, []asn1.ObjectIdentifier{oidExtKeyUsageServer, {1, 3, 6, 1, 5, 5, 7, 3, 3}})
			return csrPEM(t, ecKey, &x509.CertificateRequest{URIs: uris(caller), ExtraExtensions: []pkix.Extension{e}})
		}, 0, nil, ErrDenied, "1.3.6.1.5.5.7.3.3"},
		{"anyExtendedKeyUsage requested", func(t *testing.T) string {
			e := ext(t, oidExtExtKeyUsage, []asn1.ObjectIdentifier{{2, 5, 29, 37, 0}})
			return csrPEM(t, ecKey, &x509.CertificateRequest{URIs: uris(caller), ExtraExtensions: []pkix.Extension{e}})
		}, 0, nil, ErrDenied, "2.5.29.37.0"},
		{"RSA 1024", func(t *testing.T) string {
			return csrPEM(t, mustRSA(1024), &x509.CertificateRequest{URIs: uris(caller)})
		}, 0, nil, ErrDenied, "RSA-1024"},
		{"ECDSA P-521 not allowed by default", func(t *testing.T) string {
			return csrPEM(t, mustEC(elliptic.P521()), &x509.CertificateRequest{URIs: uris(caller)})
		}, 0, nil, ErrDenied, "P-521"},
		{"Ed25519 not allowed by default", func(t *testing.T) string {
			_, k, _ := ed25519.GenerateKey(rand.Reader)
			return csrPEM(t, k, &x509.CertificateRequest{URIs: uris(caller)})
		}, 0, nil, ErrDenied, "Ed25519"},
		{"negative validity", good, -5, nil, ErrInvalid, "negative"},
		{"absurd validity", good, 1 << 62, nil, ErrInvalid, "absurdly"},
		{"impersonation", good, 0, mustStruct(map[string]any{"ImpersonatedIdentity": "spiffe://cluster.local/ns/shop/sa/admin"}), ErrDenied, "ImpersonatedIdentity"},
		{"impersonation as a non-string", good, 0, mustStruct(map[string]any{"ImpersonatedIdentity": map[string]any{"a": 1}}), ErrDenied, "ImpersonatedIdentity"},
		{"CertSigner not a string", good, 0, mustStruct(map[string]any{"CertSigner": 3}), ErrInvalid, "CertSigner"},
		{"oversized metadata", good, 0, mustStruct(map[string]any{"pad": strings.Repeat("x", 5000)}), ErrInvalid, "metadata"},
	}
	p := newPolicy(t, nil)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, err := p.Authorize(identity(), Request{CSRPEM: tc.csr(t), ValiditySeconds: tc.validity, Metadata: tc.md})
			if !errors.Is(err, tc.want) {
				t.Fatalf("Authorize = %v, %v; want error %v", d, err, tc.want)
			}
			if d != nil {
				t.Fatal("a refused request returned a decision")
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}
}

// TestAuthorizeRefusesAnySubject: a subject with any valued attribute is
// refused, naming it, whatever the attribute type, RDN layout or string
// encoding; one that says nothing is accepted.
func TestAuthorizeRefusesAnySubject(t *testing.T) {
	str := func(tag int, s string) asn1.RawValue {
		return asn1.RawValue{Class: asn1.ClassUniversal, Tag: tag, Bytes: []byte(s)}
	}
	atv := func(oid asn1.ObjectIdentifier, v any) pkix.AttributeTypeAndValue {
		return pkix.AttributeTypeAndValue{Type: oid, Value: v}
	}
	var (
		cn     = asn1.ObjectIdentifier{2, 5, 4, 3}
		o      = asn1.ObjectIdentifier{2, 5, 4, 10}
		email  = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}
		dc     = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 25}
		uid    = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 1}
		serial = asn1.ObjectIdentifier{2, 5, 4, 5}
		custom = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 7}
	)
	cases := []struct {
		name    string
		rdns    pkix.RDNSequence
		raw     []byte // instead of rdns
		want    error  // nil: accepted
		mention string
	}{
		{"empty subject", pkix.RDNSequence{}, nil, nil, ""},
		{"empty O as the Istio agent sends", pkix.RDNSequence{{atv(o, "")}}, nil, nil, ""},
		{"several empty attributes, one multi-valued RDN", pkix.RDNSequence{{atv(o, ""), atv(cn, str(asn1.TagUTF8String, ""))}, {atv(dc, str(asn1.TagIA5String, ""))}}, nil, nil, ""},
		{"CN", pkix.RDNSequence{{atv(cn, "admin")}}, nil, ErrDenied, `CN="admin"`},
		{"CN=admin, O=system:masters", pkix.RDNSequence{{atv(o, "system:masters")}, {atv(cn, "admin")}}, nil, ErrDenied, `O="system:masters", CN="admin"`},
		{"a foreign SPIFFE ID in CN", pkix.RDNSequence{{atv(cn, "spiffe://cluster.local/ns/other/sa/x")}}, nil, ErrDenied, "ns/other/sa/x"},
		{"emailAddress", pkix.RDNSequence{{atv(email, str(asn1.TagIA5String, "root@example.com"))}}, nil, ErrDenied, `emailAddress="root@example.com"`},
		{"DC (dropped by Go's Name)", pkix.RDNSequence{{atv(dc, str(asn1.TagIA5String, "corp"))}}, nil, ErrDenied, `DC="corp"`},
		{"UID (dropped by Go's Name)", pkix.RDNSequence{{atv(uid, str(asn1.TagUTF8String, "0"))}}, nil, ErrDenied, `UID="0"`},
		{"serialNumber", pkix.RDNSequence{{atv(serial, "1")}}, nil, ErrDenied, "serialNumber"},
		{"an unknown attribute type", pkix.RDNSequence{{atv(custom, "x")}}, nil, ErrDenied, "1.3.6.1.4.1.99999.7"},
		{"multi-valued RDN: empty O next to CN", pkix.RDNSequence{{atv(o, ""), atv(cn, "admin")}}, nil, ErrDenied, `CN="admin"`},
		{"valued attribute after empty ones", pkix.RDNSequence{{atv(o, "")}, {atv(o, "")}, {atv(dc, str(asn1.TagIA5String, "x"))}}, nil, ErrDenied, `DC="x"`},
		{"T61String CN", pkix.RDNSequence{{atv(cn, str(asn1.TagT61String, "admin"))}}, nil, ErrDenied, `CN="admin"`},
		{"BMPString CN", pkix.RDNSequence{{atv(cn, str(asn1.TagBMPString, "\x00a"))}}, nil, ErrDenied, "CN="},
		{"UniversalString CN", pkix.RDNSequence{{atv(cn, str(28, "\x00\x00\x00a"))}}, nil, ErrDenied, "CN="},
		{"a non-string value", pkix.RDNSequence{{atv(cn, asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: []byte{0x02, 0x01, 0x01}})}}, nil, ErrDenied, "CN=#"},
		{"a single space", pkix.RDNSequence{{atv(cn, " ")}}, nil, ErrDenied, `CN=" "`},
		{"an empty RDN set", nil, []byte{0x30, 0x02, 0x31, 0x00}, ErrInvalid, "RDN 0 is empty"},
	}
	p := newPolicy(t, nil)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			raw := tc.raw
			if raw == nil {
				var err error
				if raw, err = asn1.Marshal(tc.rdns); err != nil {
					t.Fatal(err)
				}
			}
			csr := csrPEM(t, ecKey, &x509.CertificateRequest{RawSubject: raw, URIs: uris(caller)})
			d, err := p.Authorize(identity(), Request{CSRPEM: csr})
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Authorize: %v", err)
				}
				if !bytes.Equal(d.Template.RawSubject, nil) || d.Template.Subject.String() != "" {
					t.Fatalf("template subject %q, want empty", d.Template.Subject)
				}
				return
			}
			if !errors.Is(err, tc.want) || d != nil {
				t.Fatalf("Authorize = %v; want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}
}

// TestAuthorizeRefusesEveryAttributeType: each attribute type X.520 and
// PKCS #9 name (and one nobody does), with a value, is refused by name.
func TestAuthorizeRefusesEveryAttributeType(t *testing.T) {
	p := newPolicy(t, nil)
	types := []asn1.ObjectIdentifier{
		{2, 5, 4, 3}, {2, 5, 4, 4}, {2, 5, 4, 5}, {2, 5, 4, 6}, {2, 5, 4, 7}, {2, 5, 4, 8}, {2, 5, 4, 9},
		{2, 5, 4, 10}, {2, 5, 4, 11}, {2, 5, 4, 12}, {2, 5, 4, 17}, {2, 5, 4, 42}, {2, 5, 4, 43}, {2, 5, 4, 44},
		{2, 5, 4, 46}, {2, 5, 4, 65}, {1, 2, 840, 113549, 1, 9, 1}, {1, 2, 840, 113549, 1, 9, 2},
		{0, 9, 2342, 19200300, 100, 1, 1}, {0, 9, 2342, 19200300, 100, 1, 25}, {1, 3, 6, 1, 4, 1, 311, 60, 2, 1, 3},
		{1, 3, 6, 1, 4, 1, 99999, 1},
	}
	for _, typ := range types {
		t.Run(dn.TypeName(typ), func(t *testing.T) {
			raw, err := asn1.Marshal(pkix.RDNSequence{{{Type: typ, Value: "x"}}})
			if err != nil {
				t.Fatal(err)
			}
			_, err = p.Authorize(identity(), Request{CSRPEM: csrPEM(t, ecKey, &x509.CertificateRequest{RawSubject: raw, URIs: uris(caller)})})
			if !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), dn.TypeName(typ)+`="x"`) {
				t.Fatalf("Authorize = %v; want ErrDenied naming %s", err, dn.TypeName(typ))
			}
		})
	}
}

func mustStruct(m map[string]any) *structpb.Struct {
	s, err := structpb.NewStruct(m)
	if err != nil {
		panic(err)
	}
	return s
}

// TestImpersonationMetadataNeedsAGrant: ImpersonatedIdentity is accepted
// only for an identity the impersonation step granted to a node agent,
// and only naming that identity.
func TestImpersonationMetadataNeedsAGrant(t *testing.T) {
	p := newPolicy(t, nil)
	granted := identity()
	granted.NodeAgent = &authn.Identity{ID: spiffeid.RequireFromString("spiffe://cluster.local/ns/istio-system/sa/ztunnel")}
	csr := csrPEM(t, ecKey, &x509.CertificateRequest{URIs: uris(caller)})
	cases := []struct {
		name string
		id   *authn.Identity
		md   *structpb.Struct
		want error
	}{
		{"granted, naming the granted identity", granted, mustStruct(map[string]any{"ImpersonatedIdentity": caller}), nil},
		{"granted, naming it in an alias trust domain", granted, mustStruct(map[string]any{"ImpersonatedIdentity": "spiffe://old.example/ns/shop/sa/cart"}), nil},
		{"granted, naming another identity", granted, mustStruct(map[string]any{"ImpersonatedIdentity": "spiffe://cluster.local/ns/shop/sa/admin"}), ErrDenied},
		{"not granted", identity(), mustStruct(map[string]any{"ImpersonatedIdentity": caller}), ErrDenied},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := p.Authorize(tc.id, Request{CSRPEM: csr, Metadata: tc.md})
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("Authorize = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestAuthorizeBuildsTemplateFromPolicyOnly(t *testing.T) {
	p := newPolicy(t, nil)
	cases := []struct {
		name string
		key  crypto.Signer
		tmpl *x509.CertificateRequest
	}{
		{"agent style ECDSA", ecKey, &x509.CertificateRequest{URIs: uris(caller)}},
		{"agent style RSA", rsaKey, &x509.CertificateRequest{URIs: uris(caller)}},
		{"no SAN at all", ecKey, &x509.CertificateRequest{}},
		{"alias trust domain", ecKey, &x509.CertificateRequest{URIs: uris("spiffe://old.example/ns/shop/sa/cart")}},
		{"empty-valued subject and usages within policy are ignored", ecKey, &x509.CertificateRequest{
			// The Istio agent's CSR carries an empty O.
			Subject: pkix.Name{Organization: []string{""}},
			URIs:    uris(caller),
			ExtraExtensions: []pkix.Extension{
				{Id: oidExtKeyUsage, Value: []byte{0x03, 0x02, 0x05, 0xa0}}, // digitalSignature|keyEncipherment
				ext(t, oidExtExtKeyUsage, []asn1.ObjectIdentifier{oidExtKeyUsageServer, oidExtKeyUsageClient}),
				ext(t, oidExtBasicConstraints, struct {
					IsCA bool `asn1:"optional"`
				}{false}),
			},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, err := p.Authorize(identity(), Request{CSRPEM: csrPEM(t, tc.key, tc.tmpl), ValiditySeconds: 3600})
			if err != nil {
				t.Fatal(err)
			}
			tm := d.Template
			if len(tm.URIs) != 1 || tm.URIs[0].String() != caller {
				t.Errorf("template URIs = %v, want [%s]", tm.URIs, caller)
			}
			if len(tm.DNSNames)+len(tm.IPAddresses)+len(tm.EmailAddresses) != 0 || len(tm.ExtraExtensions) != 0 {
				t.Errorf("template carries names or extensions beyond the SPIFFE ID: %+v", tm)
			}
			if tm.IsCA || !tm.BasicConstraintsValid {
				t.Errorf("template must be a non-CA with basic constraints")
			}
			if tm.KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment {
				t.Errorf("key usage = %v", tm.KeyUsage)
			}
			if len(tm.ExtKeyUsage) != 2 {
				t.Errorf("ext key usage = %v", tm.ExtKeyUsage)
			}
			if tm.Subject.String() != "" {
				t.Errorf("subject = %q, want empty", tm.Subject.String())
			}
			if got := tm.NotAfter.Sub(tm.NotBefore); got != time.Hour+time.Minute {
				t.Errorf("lifetime = %s, want 1h plus 1m backdate", got)
			}
		})
	}
}

func TestLifetime(t *testing.T) {
	cases := []struct {
		name    string
		mode    OverMax
		seconds int64
		want    time.Duration
		err     error
	}{
		{"default when unset", Clamp, 0, 24 * time.Hour, nil},
		{"honoured inside bounds", Clamp, 7200, 2 * time.Hour, nil},
		{"clamped to max", Clamp, 90 * 24 * 3600, 24 * time.Hour, nil},
		{"raised to min", Clamp, 5, 10 * time.Minute, nil},
		{"refused above max", Refuse, 48 * 3600, 0, ErrDenied},
		{"refused below min", Refuse, 60, 0, ErrDenied},
		{"max itself accepted in refuse mode", Refuse, 24 * 3600, 24 * time.Hour, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newPolicy(t, func(c *Config) { c.OutOfBounds = tc.mode })
			_, got, err := p.lifetime(tc.seconds)
			if !errors.Is(err, tc.err) || got != tc.want {
				t.Fatalf("lifetime(%d) = %s, %v; want %s, %v", tc.seconds, got, err, tc.want, tc.err)
			}
		})
	}
}

func TestAuthorizeRefusesIdentityOutsideTrustDomain(t *testing.T) {
	p := newPolicy(t, nil)
	id := &authn.Identity{ID: spiffeid.RequireFromString("spiffe://other.example/ns/shop/sa/cart")}
	_, err := p.Authorize(id, Request{CSRPEM: csrPEM(t, ecKey, &x509.CertificateRequest{})})
	if !errors.Is(err, ErrDenied) {
		t.Fatalf("err = %v, want ErrDenied", err)
	}
	if _, err := p.Authorize(nil, Request{}); !errors.Is(err, ErrDenied) {
		t.Fatalf("nil identity: err = %v, want ErrDenied", err)
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name    string
		mod     func(*Config)
		mention string
	}{
		{"max below min", func(c *Config) { c.MaxTTL = time.Minute }, "maxTTL"},
		{"default outside", func(c *Config) { c.DefaultTTL = 48 * time.Hour }, "defaultTTL"},
		{"bad mode", func(c *Config) { c.OutOfBounds = "maybe" }, "ttlOutOfBounds"},
		{"weak RSA", func(c *Config) { c.Keys.RSAMinBits = 1024 }, "rsaMinBits"},
		{"unknown curve", func(c *Config) { c.Keys.ECDSACurves = []string{"P-224"} }, "P-224"},
		{"no trust domain", func(c *Config) { c.TrustDomain = spiffeid.TrustDomain{} }, "trustDomain"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Defaults()
			tc.mod(&cfg)
			err := cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("Validate() = %v, want an error naming %s", err, tc.mention)
			}
		})
	}
}

func FuzzAuthorize(f *testing.F) {
	f.Add(csrPEM(f, ecKey, &x509.CertificateRequest{URIs: uris(caller)}), int64(3600), []byte(`{"CertSigner":""}`))
	f.Add(csrPEM(f, ecKey, &x509.CertificateRequest{DNSNames: []string{"x"}}), int64(-1), []byte(`{"ImpersonatedIdentity":"x"}`))
	f.Add("-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n", int64(0), []byte(`{}`))
	f.Add(csrPEM(f, ecKey, &x509.CertificateRequest{Subject: pkix.Name{Organization: []string{""}}, URIs: uris(caller)}), int64(0), []byte(`{}`))
	f.Add(csrPEM(f, ecKey, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "admin"}, URIs: uris(caller)}), int64(0), []byte(`{}`))
	p := newPolicy(f, nil)
	id := identity()
	f.Fuzz(func(t *testing.T, csr string, validity int64, mdJSON []byte) {
		md := &structpb.Struct{}
		if md.UnmarshalJSON(mdJSON) != nil {
			md = nil
		}
		d, err := p.Authorize(id, Request{CSRPEM: csr, ValiditySeconds: validity, Metadata: md})
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrDenied) {
				t.Fatalf("error of unknown kind: %v", err)
			}
			return
		}
		// Whatever got through must name exactly the caller and nothing else.
		if valued, _ := dn.Valued(d.CSR.RawSubject); len(valued) != 0 || d.Template.Subject.String() != "" {
			t.Fatalf("approved a CSR whose subject says %s", dn.Describe(valued))
		}
		if len(d.Template.URIs) != 1 || d.Template.URIs[0].String() != caller || d.Template.IsCA ||
			len(d.Template.DNSNames) != 0 || d.Template.NotAfter.Sub(d.Template.NotBefore) > 24*time.Hour+time.Minute {
			t.Fatalf("approved template exceeds policy: %+v", d.Template)
		}
	})
}

// TestRenewalNeverOutlivesThePresentedCertificate: an identity whose
// credential carries a NotAfter (renewal by certificate) gets at most
// that, whatever it asks and whatever minTTL says; too little left is
// refused, naming the way out.
func TestRenewalNeverOutlivesThePresentedCertificate(t *testing.T) {
	p := newPolicy(t, nil)
	fixed := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	p.now = func() time.Time { return fixed }
	cases := []struct {
		name      string
		notAfter  time.Time
		seconds   int64
		wantUntil time.Time
		wantErr   string
	}{
		{"no bound", time.Time{}, 7200, fixed.Add(2 * time.Hour), ""},
		{"bound later than asked", fixed.Add(5 * time.Hour), 7200, fixed.Add(2 * time.Hour), ""},
		{"bound earlier than asked", fixed.Add(30 * time.Minute), 7200, fixed.Add(30 * time.Minute), ""},
		{"bound wins over minTTL", fixed.Add(3 * time.Minute), 60, fixed.Add(3 * time.Minute), ""},
		{"sub-second part of the bound dropped", fixed.Add(30*time.Minute + 900*time.Millisecond), 7200, fixed.Add(30 * time.Minute), ""},
		{"less than a minute left", fixed.Add(59 * time.Second), 7200, time.Time{}, "service-account token"},
		{"already past", fixed.Add(-time.Hour), 7200, time.Time{}, "cannot extend"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := identity()
			id.NotAfter = tc.notAfter
			d, err := p.Authorize(id, Request{CSRPEM: csrPEM(t, ecKey, &x509.CertificateRequest{URIs: uris(caller)}), ValiditySeconds: tc.seconds})
			if tc.wantErr != "" {
				if !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want ErrDenied containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !d.Template.NotAfter.Equal(tc.wantUntil) || d.Granted != tc.wantUntil.Sub(fixed) {
				t.Fatalf("NotAfter %s granted %s, want %s", d.Template.NotAfter, d.Granted, tc.wantUntil)
			}
		})
	}
}
