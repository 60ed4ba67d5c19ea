package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/broker/backends/backendtest"
	"github.com/meshca/broker/broker"
	"github.com/meshca/broker/caclient"
	"github.com/meshca/broker/config"
	"github.com/meshca/broker/csrgen"
	"github.com/meshca/broker/devissuer"
	"github.com/meshca/broker/dn"
)

const cartID = "spiffe://cluster.local/ns/shop/sa/cart"

// csrWithSubject is a CSR for a fresh key naming cartID in a critical SAN,
// with raw as its subject.
func csrWithSubject(t testing.TB, raw []byte) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	san, err := csrgen.SANExtension(csrgen.Names{URIs: []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/shop/sa/cart"}}})
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{RawSubject: raw, ExtraExtensions: []pkix.Extension{san}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// jwksBroker starts a broker on backend that authenticates with a local
// JWKS (no API server needed) and returns a client and cart's token.
func jwksBroker(t *testing.T, backend config.Backend, mod func(*config.Config)) (*broker.Broker, *caclient.Client, string) {
	t.Helper()
	iss, err := devissuer.New(devissuer.DefaultIssuer)
	if err != nil {
		t.Fatal(err)
	}
	jwks := backendtest.WriteFile(t, "jwks.json", mustJWKS(t, iss))
	b := startBroker(t, nil, func(c *config.Config) {
		c.Backend = backend
		c.Authn.JWKS = []config.JWKS{{Issuer: iss.URL, File: jwks, ClusterID: "Kubernetes"}}
		if mod != nil {
			mod(c)
		}
	})
	tok, err := iss.Token("shop", "cart", []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return b, dial(t, b, nil), tok
}

// TestHostileSubjectsRefusedOnEveryBackend: whatever PKI is behind the
// broker, a CSR whose subject says anything (names a relying party would
// read as an admin, another workload, or attribute types Go's Name drops)
// is refused with PermissionDenied naming the attribute, and an agent-
// style CSR (an empty O) gets a certificate whose subject says nothing.
func TestHostileSubjectsRefusedOnEveryBackend(t *testing.T) {
	testenvRequired(t)
	agentStyle, err := asn1.Marshal(pkix.RDNSequence{{{Type: asn1.ObjectIdentifier{2, 5, 4, 10}, Value: ""}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, bc := range backendCases() {
		t.Run(bc.name, func(t *testing.T) {
			_, cl, tok := jwksBroker(t, bc.setup(t), nil)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			for _, h := range backendtest.HostileSubjects() {
				_, err := cl.CreateCertificate(ctx, caclient.Request{CSRPEM: csrWithSubject(t, h.RawSubject), Token: tok, TTL: time.Hour})
				valued, _ := dn.Valued(h.RawSubject)
				if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), dn.Describe(valued[len(valued)-1:])) {
					t.Errorf("%s: %v; want PermissionDenied naming %s", h.Name, err, dn.Describe(valued[len(valued)-1:]))
				}
			}
			got, err := cl.CreateCertificate(ctx, caclient.Request{CSRPEM: csrWithSubject(t, agentStyle), Token: tok, TTL: time.Hour})
			if err != nil {
				t.Fatalf("agent-style CSR with an empty O: %v", err)
			}
			if valued, err := dn.Valued(got.Chain[0].RawSubject); err != nil || len(valued) != 0 {
				t.Fatalf("issued subject says [%s] (%v), want nothing", dn.Describe(valued), err)
			}
			if got.Chain[0].URIs[0].String() != cartID {
				t.Fatalf("issued %v, want %s", got.Chain[0].URIs, cartID)
			}
		})
	}
}
