package stepca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/certificates/api"
	"github.com/smallstep/certificates/ca"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/backends/backendtest"
	"github.com/meshca/broker/dn"
	"github.com/meshca/broker/integration/testenv"
	"github.com/meshca/broker/verify"
)

const spiffeID = "spiffe://cluster.local/ns/default/sa/web"

func selfSignedCert(t testing.TB, cn string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// stepCASigner builds the backend for a testenv step-ca; with keyFile the
// provisioner key is read from disk, otherwise fetched from the CA.
func stepCASigner(t testing.TB, s *testenv.StepCA, keyFile bool, mutate ...func(*Config)) *Signer {
	t.Helper()
	cfg := Config{
		URL:          s.URL,
		RootFile:     s.RootFile,
		Provisioner:  s.Provisioner,
		PasswordFile: s.PasswordFile,
		Timeout:      backends.Duration{Duration: 5 * time.Second},
	}
	if keyFile {
		cfg.KeyFile, cfg.KeyID = s.ProvisionerKeyFile, s.ProvisionerKID
	}
	for _, m := range mutate {
		m(&cfg)
	}
	sg, err := newSigner(context.Background(), cfg, backendtest.QuietLogger())
	if err != nil {
		t.Fatalf("stepca signer: %v", err)
	}
	return sg
}

func TestStepCA(t *testing.T) {
	sca := testenv.StartStepCA(t)

	t.Run("conformance, key fetched from the CA", func(t *testing.T) {
		backendtest.Run(t, stepCASigner(t, sca, false), spiffeID)
	})
	t.Run("conformance, key from keyFile", func(t *testing.T) {
		backendtest.Run(t, stepCASigner(t, sca, true), spiffeID)
	})

	s := stepCASigner(t, sca, false)

	t.Run("hostile subjects", func(t *testing.T) {
		// The SPIFFE template writes an empty subject whatever the CSR
		// says (or step-ca refuses the CSR first).
		backendtest.RunHostileSubjects(t, s, spiffeID)
	})

	t.Run("chain is leaf then intermediate, root from rootFile", func(t *testing.T) {
		req, _ := backendtest.NewRequest(t, spiffeID, 2*time.Hour)
		chain, err := s.Sign(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		backendtest.CheckIssued(t, s, req, chain)
		if len(chain) != 2 {
			t.Fatalf("chain has %d certificates, want leaf + intermediate", len(chain))
		}
		if got, want := chain[1].Raw, mustParsePEM(t, sca.IntermediatePEM).Raw; string(got) != string(want) {
			t.Errorf("chain[1] is %s, not the CA's intermediate", chain[1].Subject)
		}
		leaf := chain[0]
		if leaf.Subject.String() != "" {
			t.Errorf("leaf subject = %q, want empty (SPIFFE template)", leaf.Subject)
		}
		if d := leaf.NotAfter.Sub(req.Template.NotAfter); d > time.Second || d < -time.Second {
			t.Errorf("leaf NotAfter %v, template %v", leaf.NotAfter, req.Template.NotAfter)
		}
		anchors, _ := s.TrustAnchors(context.Background())
		if len(anchors) != 1 || string(anchors[0].Raw) != string(mustParsePEM(t, sca.RootPEM).Raw) {
			t.Errorf("trust anchors are not the root from rootFile")
		}
	})

	t.Run("serving certificate with DNS names", func(t *testing.T) {
		req, _ := backendtest.NewRequest(t, "spiffe://cluster.local/ns/istio-system/sa/meshca", time.Hour)
		req.CSR = csrWith(t, req, []string{"meshca.istio-system.svc"})
		req.Template.DNSNames = []string{"meshca.istio-system.svc"}
		chain, err := s.Sign(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		backendtest.CheckIssued(t, s, req, chain)
		if got := chain[0].DNSNames; len(got) != 1 || got[0] != "meshca.istio-system.svc" {
			t.Errorf("DNS names = %v", got)
		}
	})

	t.Run("CA refuses: template names differ from the CSR", func(t *testing.T) {
		req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
		req.Template.URIs = []*url.URL{mustURL(t, "spiffe://cluster.local/ns/other/sa/x")}
		_, err := s.Sign(context.Background(), req)
		if !errors.Is(err, backends.ErrRefused) {
			t.Fatalf("Sign error = %v, want ErrRefused", err)
		}
		t.Logf("refusal as the broker reports it: %v", err)
		if !strings.Contains(err.Error(), "step-ca answered HTTP 4") {
			t.Errorf("error does not carry the CA's answer: %v", err)
		}
	})

	t.Run("CA refuses: lifetime beyond the provisioner's maximum", func(t *testing.T) {
		req, _ := backendtest.NewRequest(t, spiffeID, 24*365*time.Hour)
		_, err := s.Sign(context.Background(), req)
		if !errors.Is(err, backends.ErrRefused) {
			t.Fatalf("Sign error = %v, want ErrRefused", err)
		}
		t.Logf("refusal as the broker reports it: %v", err)
	})

	t.Run("token is bound to its CSR", func(t *testing.T) {
		// A token lifted from one request must not certify another key
		// for the same identity.
		iss, err := s.tokenIssuer(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		reqA, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
		reqB, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
		tok, err := iss.token(reqA.CSR, reqA.Template, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		err = s.do(context.Background(), func(ctx context.Context) error {
			_, err := s.client.SignWithContext(ctx, &api.SignRequest{CsrPEM: api.CertificateRequest{CertificateRequest: reqB.CSR}, OTT: tok})
			return err
		})
		if !errors.Is(err, backends.ErrRefused) || !strings.Contains(err.Error(), "fingerprint") {
			t.Fatalf("signing another CSR with the token = %v, want a fingerprint refusal", err)
		}
	})

	t.Run("wrong provisioner password fails at startup", func(t *testing.T) {
		cfg := Config{URL: sca.URL, RootFile: sca.RootFile, Provisioner: sca.Provisioner,
			PasswordFile: backendtest.WriteFile(t, "pw", []byte("not-the-password"))}
		if _, err := newSigner(context.Background(), cfg, backendtest.QuietLogger()); err == nil || !strings.Contains(err.Error(), "wrong password") {
			t.Fatalf("newSigner = %v, want a decryption error", err)
		}
	})

	t.Run("unknown provisioner fails at startup", func(t *testing.T) {
		cfg := Config{URL: sca.URL, RootFile: sca.RootFile, Provisioner: "nope", PasswordFile: sca.PasswordFile}
		if _, err := newSigner(context.Background(), cfg, backendtest.QuietLogger()); err == nil || !strings.Contains(err.Error(), "no JWK provisioner") {
			t.Fatalf("newSigner = %v, want provisioner not found", err)
		}
	})

	t.Run("pause: unavailable within the timeout, then recovery", func(t *testing.T) {
		ps := stepCASigner(t, sca, true, func(c *Config) { c.Timeout.Duration = 500 * time.Millisecond })
		sca.Pause(t)
		req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
		start := time.Now()
		_, err := ps.Sign(context.Background(), req)
		sca.Resume(t)
		if !errors.Is(err, backends.ErrUnavailable) {
			t.Fatalf("Sign against a frozen CA = %v, want ErrUnavailable", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("Sign took %v with a 500ms timeout", d)
		}
		signEventually(t, ps, req)
	})

	t.Run("restart: unavailable while down, then recovery", func(t *testing.T) {
		req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
		if _, err := s.Sign(context.Background(), req); err != nil {
			t.Fatal(err)
		}
		sca.Stop()
		_, err := s.Sign(context.Background(), req)
		if !errors.Is(err, backends.ErrUnavailable) {
			sca.Start(t)
			t.Fatalf("Sign against a stopped CA = %v, want ErrUnavailable", err)
		}
		t.Logf("while down: %v", err)
		sca.Start(t)
		signEventually(t, s, req)
	})

	t.Run("startup while the CA is down, key fetched later", func(t *testing.T) {
		sca.Stop()
		cfg := Config{URL: sca.URL, RootFile: sca.RootFile, Provisioner: sca.Provisioner, PasswordFile: sca.PasswordFile}
		ls, err := newSigner(context.Background(), cfg, backendtest.QuietLogger())
		if err != nil {
			sca.Start(t)
			t.Fatalf("newSigner with the CA down = %v, want a lazy signer", err)
		}
		req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
		if _, err := ls.Sign(context.Background(), req); !errors.Is(err, backends.ErrUnavailable) {
			sca.Start(t)
			t.Fatalf("Sign with the CA down = %v, want ErrUnavailable", err)
		}
		sca.Start(t)
		signEventually(t, ls, req)
	})
}

// signEventually signs through the broker's retry policy, as the server
// does, and checks the result.
func signEventually(t *testing.T, s *Signer, req *backends.Request) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var chain []*x509.Certificate
	err := backends.RetryPolicy{Attempts: 10}.Do(ctx, func(ctx context.Context) error {
		var err error
		chain, err = s.Sign(ctx, req)
		return err
	})
	if err != nil {
		t.Fatalf("no recovery: %v", err)
	}
	backendtest.CheckIssued(t, s, req, chain)
}

func mustParsePEM(t testing.TB, p []byte) *x509.Certificate {
	t.Helper()
	certs, err := backends.ParseCertificates(p)
	if err != nil || len(certs) == 0 {
		t.Fatalf("parse PEM: %v", err)
	}
	return certs[0]
}

// csrWith re-creates req's CSR with extra DNS names (same URIs), since
// step-ca wants the CSR's names to equal the token's.
func csrWith(t testing.TB, req *backends.Request, dns []string) *x509.CertificateRequest {
	t.Helper()
	return backendtest.CSR(t, nil, &x509.CertificateRequest{URIs: req.Template.URIs, DNSNames: dns})
}

// BenchmarkSign compares the backend's Sign (token minting, CSR binding,
// error mapping included) with a bare ca client Sign given a token minted
// beforehand by smallstep's own ca.Provisioner. ratio = backend / raw.
func BenchmarkSign(b *testing.B) {
	sca := testenv.StartStepCA(b)
	s := stepCASigner(b, sca, true)
	raw, err := ca.NewClient(sca.URL, ca.WithRootFile(sca.RootFile))
	if err != nil {
		b.Fatal(err)
	}
	prov, err := ca.NewProvisioner(sca.Provisioner, sca.ProvisionerKID, sca.URL, []byte(sca.Password), ca.WithRootFile(sca.RootFile))
	if err != nil {
		b.Fatal(err)
	}
	req, _ := backendtest.NewRequest(b, spiffeID, time.Hour)
	ctx := context.Background()
	// Warm both connections so neither side pays a TLS handshake.
	if _, err := s.Sign(ctx, req); err != nil {
		b.Fatal(err)
	}
	b.Run("backend-vs-raw", func(b *testing.B) {
		tokens := make([]string, b.N+1)
		for i := range tokens {
			if tokens[i], err = prov.Token(spiffeID, spiffeID); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := raw.SignWithContext(ctx, &api.SignRequest{CsrPEM: api.CertificateRequest{CertificateRequest: req.CSR}, OTT: tokens[b.N]}); err != nil {
			b.Fatal(err)
		}
		var backendTime, rawTime time.Duration
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			if _, err := s.Sign(ctx, req); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			if _, err := raw.SignWithContext(ctx, &api.SignRequest{CsrPEM: api.CertificateRequest{CertificateRequest: req.CSR}, OTT: tokens[i],
				NotAfter: api.NewTimeDuration(req.Template.NotAfter)}); err != nil {
				b.Fatal(err)
			}
			backendTime += t1.Sub(t0)
			rawTime += time.Since(t1)
		}
		b.ReportMetric(float64(backendTime.Microseconds())/float64(b.N)/1000, "backend-ms/sign")
		b.ReportMetric(float64(rawTime.Microseconds())/float64(b.N)/1000, "raw-ms/sign")
		b.ReportMetric(float64(backendTime)/float64(rawTime), "ratio")
	})
}

// TestStepCAAuthorityPolicy checks the CA-side guard the docs recommend:
// an authority x509 policy limiting URI SANs to the trust domain, so that
// the CA refuses other identities even if the broker were misconfigured.
func TestStepCAAuthorityPolicy(t *testing.T) {
	sca := testenv.StartStepCA(t)
	cfgPath := filepath.Join(sca.StepPath, "config", "ca.json")
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var caCfg map[string]any
	if err := json.Unmarshal(raw, &caCfg); err != nil {
		t.Fatal(err)
	}
	caCfg["authority"].(map[string]any)["policy"] = map[string]any{
		"x509": map[string]any{"allow": map[string]any{"uri": []string{"cluster.local"}}},
	}
	out, _ := json.MarshalIndent(caCfg, "", "\t")
	if err := os.WriteFile(cfgPath, out, 0o600); err != nil {
		t.Fatal(err)
	}
	sca.Restart(t)

	s := stepCASigner(t, sca, true)
	backendtest.Run(t, s, spiffeID)
	req, _ := backendtest.NewRequest(t, "spiffe://evil.example/ns/default/sa/web", time.Hour)
	_, err = s.Sign(context.Background(), req)
	if !errors.Is(err, backends.ErrRefused) {
		t.Fatalf("Sign outside the trust domain = %v, want ErrRefused", err)
	}
	t.Logf("refusal as the broker reports it: %v", err)
}

// TestStepCADefaultTemplate: without the provisioner's SPIFFE template,
// step-ca's default template puts the token's subject (the SPIFFE ID) into
// the CN. That is a subject nobody approved: the broker's verification
// refuses it, which is why docs/backends/step-ca.md requires the template.
func TestStepCADefaultTemplate(t *testing.T) {
	sca := testenv.StartStepCAWith(t, testenv.StepCAOptions{Bare: true})
	s := stepCASigner(t, sca, true)
	req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	chain, err := s.Sign(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := dn.Valued(chain[0].RawSubject)
	if len(got) == 0 {
		t.Fatalf("the default template issued an empty subject; the docs say it fills the CN")
	}
	anchors, _ := s.TrustAnchors(context.Background())
	_, err = verify.Chain(req, chain, anchors, time.Now())
	if !errors.Is(err, verify.ErrMismatch) || !strings.Contains(err.Error(), "subject") {
		t.Fatalf("verification of a leaf with subject [%s] = %v, want a subject mismatch", dn.Describe(got), err)
	}
	t.Logf("default template: leaf subject [%s]; verification: %v", dn.Describe(got), err)
	backendtest.RunHostileSubjects(t, s, spiffeID)
}
