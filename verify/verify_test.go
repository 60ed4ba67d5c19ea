package verify_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/meshca/broker/backends/backendtest"
	"github.com/meshca/broker/verify"
)

const workload = "spiffe://cluster.local/ns/shop/sa/cart"

type ca struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newCA(t *testing.T, name string, parent *ca) *ca {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	issuer, signer := tmpl, crypto.Signer(key)
	if parent != nil {
		issuer, signer = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &ca{c, key}
}

func (c *ca) issue(t *testing.T, tmpl *x509.Certificate, pub crypto.PublicKey) *x509.Certificate {
	t.Helper()
	tmpl.SerialNumber = big.NewInt(7)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, pub, c.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert
}

func TestChain(t *testing.T) {
	root := newCA(t, "root", nil)
	inter := newCA(t, "inter", root)
	otherRoot := newCA(t, "other root", nil)
	req, _ := backendtest.NewRequest(t, workload, time.Hour)
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)

	good := func(t *testing.T) *x509.Certificate { c := *req.Template; return inter.issue(t, &c, req.CSR.PublicKey) }
	with := func(mod func(c *x509.Certificate)) func(t *testing.T) *x509.Certificate {
		return func(t *testing.T) *x509.Certificate {
			c := *req.Template
			mod(&c)
			return inter.issue(t, &c, req.CSR.PublicKey)
		}
	}
	cases := []struct {
		name    string
		chain   func(t *testing.T) []*x509.Certificate
		anchors []*x509.Certificate
		wantLen int
		mention string
	}{
		{"leaf and intermediate", func(t *testing.T) []*x509.Certificate { return []*x509.Certificate{good(t), inter.cert} }, []*x509.Certificate{root.cert}, 3, ""},
		{"root included and repeated leaf", func(t *testing.T) []*x509.Certificate {
			l := good(t)
			return []*x509.Certificate{l, l, inter.cert, root.cert, root.cert}
		}, []*x509.Certificate{root.cert}, 3, ""},
		{"intermediate as anchor", func(t *testing.T) []*x509.Certificate { return []*x509.Certificate{good(t)} }, []*x509.Certificate{inter.cert}, 2, ""},
		{"rotation: both roots trusted", func(t *testing.T) []*x509.Certificate { return []*x509.Certificate{good(t), inter.cert} }, []*x509.Certificate{otherRoot.cert, root.cert}, 3, ""},
		{"empty", func(*testing.T) []*x509.Certificate { return nil }, []*x509.Certificate{root.cert}, 0, "no certificate"},
		{"no anchors", func(t *testing.T) []*x509.Certificate { return []*x509.Certificate{good(t), inter.cert} }, nil, 0, "no trust anchors"},
		{"wrong root", func(t *testing.T) []*x509.Certificate { return []*x509.Certificate{good(t), inter.cert} }, []*x509.Certificate{otherRoot.cert}, 0, "does not verify"},
		{"missing intermediate", func(t *testing.T) []*x509.Certificate { return []*x509.Certificate{good(t)} }, []*x509.Certificate{root.cert}, 0, "does not verify"},
		{"another key", func(t *testing.T) []*x509.Certificate {
			c := *req.Template
			return []*x509.Certificate{inter.issue(t, &c, otherKey.Public()), inter.cert}
		}, []*x509.Certificate{root.cert}, 0, "public key"},
		{"another identity", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) {
				c.URIs = []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/shop/sa/admin"}}
			})(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 0, "URI SANs"},
		{"an extra DNS name", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) { c.DNSNames = []string{"evil"} })(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 0, "DNS SANs"},
		{"an IP SAN", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) { c.IPAddresses = []net.IP{net.IPv4(1, 2, 3, 4)} })(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 0, "IP or email"},
		{"a CA leaf", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) { c.IsCA = true })(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 0, "is a CA"},
		{"longer than approved", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) { c.NotAfter = c.NotAfter.Add(time.Hour) })(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 0, "approved until"},
		{"server auth only", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} })(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 0, "extended key usage"},
		{"no EKU at all is unrestricted", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) { c.ExtKeyUsage = nil })(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 0, "extended key usage [none]"},
		{"an extra EKU", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) { c.ExtKeyUsage = append(c.ExtKeyUsage, x509.ExtKeyUsageCodeSigning) })(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 0, "codeSigning"},
		{"anyExtendedKeyUsage", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageAny} })(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 0, "extended key usage [any]"},
		{"an unknown EKU", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) { c.UnknownExtKeyUsage = []asn1.ObjectIdentifier{{1, 2, 3, 4}} })(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 0, "1.2.3.4"},
		{"EKUs in another order", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) {
				c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
			})(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 3, ""},
		{"keyCertSign and cRLSign on a leaf", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign | x509.KeyUsageCRLSign })(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 0, "keyCertSign"},
		{"no key usage at all", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) { c.KeyUsage = 0 })(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 0, "key usage [none]"},
		{"keyAgreement added", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageKeyAgreement })(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 0, "keyAgreement"},
		{"keyEncipherment dropped for an ECDSA key", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageDigitalSignature })(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 3, ""},
		{"digitalSignature dropped", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyEncipherment })(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 0, "key usage"},
		{"backdated beyond policy", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) { c.NotBefore = c.NotBefore.Add(-time.Hour) })(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 0, "valid from"},
		{"not valid until later", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) { c.NotBefore = time.Now().Add(10 * time.Minute) })(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 0, "valid from"},
		{"NotBefore the time of signing (PKI ignores the requested one)", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) { c.NotBefore = time.Now() })(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 3, ""},
		{"subject copied from a CSR", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) {
				c.Subject = pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}}
			})(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 0, `O="system:masters", CN="admin"`},
		{"subject attribute Go's Name drops (DC)", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) {
				c.RawSubject = mustDER(t, pkix.RDNSequence{{{Type: asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 25}, Value: asn1.RawValue{Tag: asn1.TagIA5String, Bytes: []byte("corp")}}}})
			})(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 0, `DC="corp"`},
		{"an empty-valued O, as the Istio agent's CSR carries", func(t *testing.T) []*x509.Certificate {
			return []*x509.Certificate{with(func(c *x509.Certificate) { c.Subject = pkix.Name{Organization: []string{""}} })(t), inter.cert}
		}, []*x509.Certificate{root.cert}, 3, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := verify.Chain(req, tc.chain(t), tc.anchors, time.Now())
			if tc.mention != "" {
				if !errors.Is(err, verify.ErrMismatch) || !strings.Contains(err.Error(), tc.mention) {
					t.Fatalf("err = %v, want ErrMismatch mentioning %q", err, tc.mention)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tc.wantLen {
				t.Fatalf("chain length %d, want %d", len(got), tc.wantLen)
			}
			if !got[len(got)-1].Equal(tc.anchors[len(tc.anchors)-1]) && !got[len(got)-1].Equal(tc.anchors[0]) {
				t.Errorf("chain does not end in an anchor")
			}
		})
	}
}

func TestPEMIsOneCertificatePerEntryEndingInNewline(t *testing.T) {
	root := newCA(t, "root", nil)
	inter := newCA(t, "inter", root)
	for i, s := range verify.PEM([]*x509.Certificate{inter.cert, root.cert}) {
		if !strings.HasSuffix(s, "\n") {
			t.Errorf("entry %d does not end in a newline", i)
		}
		block, rest := pem.Decode([]byte(s))
		if block == nil || len(rest) != 0 {
			t.Errorf("entry %d is not exactly one PEM block", i)
		}
	}
}

func mustDER(t *testing.T, v any) []byte {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
