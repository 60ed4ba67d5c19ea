package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"testing"
	"time"

	"github.com/meshca/broker/broker"
	"github.com/meshca/broker/integration/testenv"
)

// checkAgentCerts asserts what a workload relies on: the SPIFFE ID, a chain
// to the broker's root, and a key that pairs with the certificate.
func checkAgentCerts(t *testing.T, got *testenv.AgentCerts, wantID string, b *broker.Broker, wantKey string) {
	t.Helper()
	var chain []*x509.Certificate
	rest := got.CertChainPEM
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		t.Fatalf("agent wrote no certificate; log:\n%s", got.Log)
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != wantID {
		t.Fatalf("leaf URIs = %v, want [%s]", leaf.URIs, wantID)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootsPEM(t, b)) {
		t.Fatal("broker roots do not parse")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("agent's chain does not verify to the broker's root: %v", err)
	}
	if string(got.RootCertPEM) == "" {
		t.Error("agent wrote no root-cert.pem")
	}
	pair, err := tls.X509KeyPair(got.CertChainPEM, got.KeyPEM)
	if err != nil {
		t.Fatalf("agent's key does not pair with its certificate: %v", err)
	}
	if alg := leaf.PublicKeyAlgorithm.String(); alg != wantKey {
		t.Errorf("key algorithm = %s, want %s", alg, wantKey)
	}
	_ = pair
}

// TestIstioAgentGetsCertificate runs the real pilot-agent against the
// broker with a real service-account token reviewed by a real API server.
func TestIstioAgentGetsCertificate(t *testing.T) {
	kube := testenv.StartKube(t)
	kube.CreateNamespace(t, "shop")
	kube.CreateServiceAccount(t, "shop", "cart")
	b := startBroker(t, kube, nil)

	for _, tc := range []struct {
		name  string
		ecdsa bool
		alg   string
	}{
		{"RSA-2048, the agent's default", false, "RSA"},
		{"ECDSA P-256", true, "ECDSA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := fmt.Sprintf("cart-%v", tc.ecdsa)
			kube.CreatePod(t, "shop", pod, "cart")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			tok, err := kube.Token(ctx, "shop", "cart", []string{testenv.IstioCAAudience}, time.Hour, pod)
			if err != nil {
				t.Fatal(err)
			}
			got, err := testenv.RunPilotAgent(t, testenv.PilotAgentOptions{
				CAAddr:         b.Addr(),
				Token:          tok,
				RootPEM:        rootsPEM(t, b),
				Namespace:      "shop",
				PodName:        pod,
				ServiceAccount: "cart",
				ECDSA:          tc.ecdsa,
			})
			if err != nil {
				t.Fatal(err)
			}
			checkAgentCerts(t, got, "spiffe://cluster.local/ns/shop/sa/cart", b, tc.alg)
		})
	}
}
