package istiodcert

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/backends/localca"
	"github.com/meshca/broker/csrgen"
	"github.com/meshca/broker/policy"
	"github.com/meshca/broker/trust"
)

func setup(t *testing.T) (*localca.CA, *trust.Bundle) {
	t.Helper()
	ca, _, err := localca.LoadOrCreate(t.TempDir(), localca.Config{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := trust.LoadBundle(context.Background(), trust.BundleConfig{Backend: ca.TrustAnchors})
	if err != nil {
		t.Fatal(err)
	}
	return ca, b
}

// agedSecret is an istiod Secret whose certificate is past two thirds of
// its lifetime (valid still, due for renewal).
func agedSecret(t *testing.T, signer backends.Signer, names []string) *corev1.Secret {
	t.Helper()
	now := time.Now()
	return issuedSecret(t, signer, names, now.Add(-20*time.Hour), now.Add(4*time.Hour))
}

// issuedSecret is an istiod Secret holding a certificate for names from
// signer, valid from notBefore to notAfter, and its key.
func issuedSecret(t *testing.T, signer backends.Signer, names []string, notBefore, notAfter time.Time) *corev1.Secret {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := csrgen.New(key, csrgen.Names{DNSNames: names})
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(der)
	chain, err := signer.Sign(context.Background(), &backends.Request{CSR: csr, Template: policy.ServingTemplate(names, notBefore, notAfter)})
	if err != nil {
		t.Fatal(err)
	}
	var crt bytes.Buffer
	for _, c := range chain {
		pem.Encode(&crt, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "istiod-tls", Namespace: "istio-system"}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: crt.Bytes(), corev1.TLSPrivateKeyKey: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})}}
}

func leafOf(t *testing.T, s *corev1.Secret) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(s.Data[corev1.TLSCertKey])
	if block == nil {
		t.Fatal("no certificate in the Secret")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestKeeperRenewsADueCertificateAndWritesTheBundle(t *testing.T) {
	cases := []struct {
		name     string
		existing func(backends.Signer, []string) *corev1.Secret
		reissued bool
	}{
		{"no Secret yet", func(backends.Signer, []string) *corev1.Secret { return nil }, true},
		{"a certificate past two thirds of its life", func(s backends.Signer, names []string) *corev1.Secret { return agedSecret(t, s, names) }, true},
		{"a certificate lacking a name", func(s backends.Signer, names []string) *corev1.Secret { return agedSecret(t, s, names[:1]) }, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ca, bundle := setup(t)
			cfg := Config{Namespace: "istio-system", Name: "istiod-tls", Revision: "canary", TTL: 24 * time.Hour, Reconcile: 20 * time.Millisecond,
				Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			cs := fake.NewClientset()
			var before *x509.Certificate
			if s := tc.existing(ca, cfg.DNSNames()); s != nil {
				before = leafOf(t, s)
				if _, err := cs.CoreV1().Secrets("istio-system").Create(context.Background(), s, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			cfg.Client = cs
			k, err := New(cfg, ca, bundle)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			done := make(chan struct{})
			go func() { k.Run(ctx); close(done) }()
			var got *corev1.Secret
			for ctx.Err() == nil {
				s, err := cs.CoreV1().Secrets("istio-system").Get(ctx, "istiod-tls", metav1.GetOptions{})
				if err == nil && (before == nil || !leafOf(t, s).Equal(before)) && len(s.Data["ca.crt"]) > 0 {
					got = s
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			cancel()
			<-done
			if got == nil {
				t.Fatal("the Secret was not (re)written")
			}
			leaf := leafOf(t, got)
			for _, n := range []string{"istiod.istio-system.svc", "istiod-canary.istio-system.svc"} {
				if !slices.Contains(leaf.DNSNames, n) {
					t.Errorf("certificate lacks %s", n)
				}
			}
			if time.Until(leaf.NotAfter) < 23*time.Hour {
				t.Errorf("the certificate expires in %s; a fresh one lives 24h", time.Until(leaf.NotAfter))
			}
			if !bytes.Equal(got.Data["ca.crt"], bundle.Current().PEM) {
				t.Error("ca.crt is not the trust bundle")
			}
		})
	}
}

// TestKeeperAdoptsAGoodCertificate: a new leader finds a certificate that
// is valid, for every name, chained to the bundle and not yet due: it
// keeps it (adding ca.crt) rather than reissuing.
func TestKeeperAdoptsAGoodCertificate(t *testing.T) {
	ca, bundle := setup(t)
	cfg := Config{Namespace: "istio-system", Name: "istiod-tls", TTL: 24 * time.Hour, Reconcile: 20 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	now := time.Now()
	fresh := issuedSecret(t, ca, cfg.DNSNames(), now.Add(-time.Minute), now.Add(24*time.Hour))
	issued := leafOf(t, fresh)
	cs := fake.NewClientset(fresh)
	cfg.Client = cs
	k, err := New(cfg, ca, bundle)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	k.Run(ctx)
	got, err := cs.CoreV1().Secrets("istio-system").Get(context.Background(), "istiod-tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !leafOf(t, got).Equal(issued) {
		t.Fatal("a good certificate was replaced")
	}
	if !bytes.Equal(got.Data["ca.crt"], bundle.Current().PEM) {
		t.Fatal("ca.crt was not added")
	}
}
