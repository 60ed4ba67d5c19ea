package csrgen

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"net/url"
	"slices"
	"testing"
)

func TestNewMarksSANCriticalWithEmptySubject(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id, _ := url.Parse("spiffe://cluster.local/ns/shop/sa/cart")
	cases := []struct {
		name  string
		names Names
	}{
		{"SPIFFE ID", Names{URIs: []*url.URL{id}}},
		{"serving names", Names{DNSNames: []string{"istiod.istio-system.svc", "meshca-broker.istio-system.svc"}}},
		{"both", Names{URIs: []*url.URL{id}, DNSNames: []string{"a.example"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			der, err := New(key, tc.names)
			if err != nil {
				t.Fatal(err)
			}
			csr, err := x509.ParseCertificateRequest(der)
			if err != nil {
				t.Fatal(err)
			}
			if err := csr.CheckSignature(); err != nil {
				t.Fatal(err)
			}
			if len(csr.Subject.Names) != 0 {
				t.Errorf("subject %v, want empty", csr.Subject)
			}
			var sans int
			for _, e := range csr.Extensions {
				if e.Id.Equal(oidSubjectAltName) {
					sans++
					if !e.Critical {
						t.Errorf("subjectAltName is not critical")
					}
				}
			}
			if sans != 1 {
				t.Errorf("%d subjectAltName extensions, want 1", sans)
			}
			if !slices.Equal(csr.DNSNames, tc.names.DNSNames) {
				t.Errorf("DNS names %v, want %v", csr.DNSNames, tc.names.DNSNames)
			}
			if len(csr.URIs) != len(tc.names.URIs) || (len(csr.URIs) == 1 && csr.URIs[0].String() != id.String()) {
				t.Errorf("URIs %v, want %v", csr.URIs, tc.names.URIs)
			}
		})
	}
}

func TestNewWithoutNamesHasNoSAN(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := New(key, Names{})
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(der)
	if len(csr.Extensions) != 0 {
		t.Errorf("extensions %v, want none", csr.Extensions)
	}
}
