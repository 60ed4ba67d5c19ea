package verify

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/meshca/broker/backends/backendtest"
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
		}, []*x509.Certificate{root.cert}, 3, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Chain(req, tc.chain(t), tc.anchors, time.Now())
			if tc.mention != "" {
				if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), tc.mention) {
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
	for i, s := range PEM([]*x509.Certificate{inter.cert, root.cert}) {
		if !strings.HasSuffix(s, "\n") {
			t.Errorf("entry %d does not end in a newline", i)
		}
		block, rest := pem.Decode([]byte(s))
		if block == nil || len(rest) != 0 {
			t.Errorf("entry %d is not exactly one PEM block", i)
		}
	}
}
