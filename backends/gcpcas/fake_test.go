package gcpcas_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/security/privateca/apiv1/privatecapb"
	"github.com/google/uuid"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/backends/backendtest"
	"github.com/meshca/broker/backends/gcpcas"
	fakecas "github.com/meshca/broker/integration/fakes/gcpcas"
)

const spiffeID = "spiffe://cluster.local/ns/default/sa/bench"

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

func startFake(t testing.TB, opts fakecas.Options) *fakecas.Server {
	t.Helper()
	f, err := fakecas.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

// newSigner builds the backend through the registry from JSON, as the
// broker's configuration loader hands it over.
func newSigner(t testing.TB, f *fakecas.Server, extra map[string]any) backends.Signer {
	t.Helper()
	cfg := map[string]any{"caPool": f.PoolName, "endpoint": f.Addr, "insecure": true}
	for k, v := range extra {
		cfg[k] = v
	}
	raw, _ := json.Marshal(cfg)
	s, err := backends.New(context.Background(), gcpcas.Type, backends.Options{Config: raw, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.(*gcpcas.Signer).Close() })
	return s
}

func sign(t *testing.T, s backends.Signer, req *backends.Request, timeout time.Duration) ([]*x509.Certificate, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return s.Sign(ctx, req)
}

func TestConformance(t *testing.T) {
	for _, alg := range []string{"RSA_PKCS1_2048_SHA256", "EC_P256_SHA256"} {
		t.Run(alg, func(t *testing.T) {
			f := startFake(t, fakecas.Options{KeyAlgorithm: alg})
			backendtest.Run(t, newSigner(t, f, nil), spiffeID)
		})
	}
}

func TestCreateRequestOnTheWire(t *testing.T) {
	f := startFake(t, fakecas.Options{CertificateTemplates: []string{"mesh"}})
	s := newSigner(t, f, map[string]any{"caId": "ca-1", "certificateTemplate": "mesh"})
	req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	chain, err := sign(t, s, req, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	in := f.LastCreateRequest()
	if in.GetParent() != f.PoolName || in.GetIssuingCertificateAuthorityId() != "ca-1" {
		t.Errorf("parent %q, issuing CA %q", in.GetParent(), in.GetIssuingCertificateAuthorityId())
	}
	if id, err := uuid.Parse(in.GetRequestId()); err != nil || id == uuid.Nil {
		t.Errorf("request_id %q is not a non-zero UUID", in.GetRequestId())
	}
	if !strings.HasPrefix(in.GetCertificateId(), "meshca-") || len(in.GetCertificateId()) > 63 {
		t.Errorf("certificate_id %q", in.GetCertificateId())
	}
	c := in.GetCertificate()
	if !strings.HasPrefix(c.GetPemCsr(), "-----BEGIN CERTIFICATE REQUEST-----") {
		t.Errorf("a CSR asking for exactly the approved names should travel as pem_csr")
	}
	if d := c.GetLifetime().AsDuration(); d > time.Hour || d < time.Hour-5*time.Second {
		t.Errorf("lifetime %v, want about the template's hour", d)
	}
	if want := "projects/fake-project/locations/us-central1/certificateTemplates/mesh"; c.GetCertificateTemplate() != want {
		t.Errorf("certificate_template %q, want %q", c.GetCertificateTemplate(), want)
	}
	if p := f.LastRequestParams(); !strings.Contains(p, "parent=") || !strings.Contains(p, url.QueryEscape(f.PoolName)) {
		t.Errorf("x-goog-request-params %q does not route to the pool", p)
	}
	if len(chain) != 3 || !chain[1].Equal(f.Subordinate("ca-1")) || !chain[2].Equal(f.Root("ca-1")) {
		t.Errorf("chain of %d, want leaf, issuing CA, root", len(chain))
	}
}

func TestConfigModeWhenCSRAsksForMore(t *testing.T) {
	f := startFake(t, fakecas.Options{})
	s := newSigner(t, f, nil)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(spiffeID)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}, DNSNames: []string{"admin.example.com"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(der)
	req := backendtest.NewRequestForKey(t, key, spiffeID, time.Hour)
	req.CSR = csr
	chain, err := sign(t, s, req, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	backendtest.CheckIssued(t, s, req, chain)
	cfg := f.LastCreateRequest().GetCertificate().GetConfig()
	if cfg == nil || cfg.GetPublicKey().GetFormat() != privatecapb.PublicKey_PEM {
		t.Fatalf("expected config mode with a PEM public key, got %v", f.LastCreateRequest().GetCertificate())
	}
	if got := cfg.GetSubjectConfig().GetSubjectAltName().GetUris(); len(got) != 1 || got[0] != spiffeID {
		t.Errorf("config URIs %v", got)
	}
}

func TestThrottledThenIssued(t *testing.T) {
	f := startFake(t, fakecas.Options{})
	s := newSigner(t, f, nil)
	f.Throttle(2, "CreateCertificate")
	req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	chain, err := sign(t, s, req, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	backendtest.CheckIssued(t, s, req, chain)
	if calls, issued := f.Calls("CreateCertificate"), f.IssuedCount(); calls != 3 || issued != 1 {
		t.Errorf("%d calls, %d issued; want 3 and 1", calls, issued)
	}
}

func TestThrottledBeyondDeadline(t *testing.T) {
	f := startFake(t, fakecas.Options{})
	s := newSigner(t, f, nil)
	f.Throttle(1 << 30)
	req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	start := time.Now()
	_, err := sign(t, s, req, 700*time.Millisecond)
	if !errors.Is(err, backends.ErrThrottled) || !strings.Contains(err.Error(), "Quota exceeded") {
		t.Fatalf("err = %v, want ErrThrottled with Google's message", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Sign took %v, beyond the caller's 700ms deadline", d)
	}
}

func TestSlowCAIsUnavailable(t *testing.T) {
	f := startFake(t, fakecas.Options{})
	s := newSigner(t, f, nil)
	f.SetLatency(3 * time.Second)
	req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	_, err := sign(t, s, req, 500*time.Millisecond)
	if !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable (deadline exceeded)", err)
	}
}

func TestRefusals(t *testing.T) {
	f := startFake(t, fakecas.Options{CAs: []string{"ca-1", "ca-2"}})
	tests := []struct {
		name  string
		extra map[string]any
		setup func(t *testing.T)
		req   func(t *testing.T) *backends.Request
		want  string
	}{
		{
			name: "bad CSR signature",
			req: func(t *testing.T) *backends.Request {
				req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
				bad := *req.CSR
				bad.Raw = append([]byte(nil), req.CSR.Raw...)
				bad.Raw[len(bad.Raw)-3] ^= 0xff
				req.CSR = &bad
				return req
			},
			want: "InvalidArgument",
		},
		{
			name:  "disabled CA",
			extra: map[string]any{"caId": "ca-2"},
			setup: func(t *testing.T) {
				f.SetCAState("ca-2", privatecapb.CertificateAuthority_DISABLED)
				t.Cleanup(func() { f.SetCAState("ca-2", privatecapb.CertificateAuthority_ENABLED) })
			},
			want: "FailedPrecondition",
		},
		{name: "unknown CA", extra: map[string]any{"caId": "nope"}, want: "NotFound"},
		{name: "unknown template", extra: map[string]any{"certificateTemplate": "nope"}, want: "NotFound"},
		{name: "unknown pool", extra: map[string]any{"caPool": "projects/fake-project/locations/us-central1/caPools/other"}, want: "NotFound"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup(t)
			}
			s := newSigner(t, f, tt.extra)
			req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
			if tt.req != nil {
				req = tt.req(t)
			}
			_, err := sign(t, s, req, 5*time.Second)
			if !errors.Is(err, backends.ErrRefused) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrRefused with %s", err, tt.want)
			}
		})
	}
}

func TestOutageThenRecovery(t *testing.T) {
	f := startFake(t, fakecas.Options{})
	s := newSigner(t, f, nil)
	req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	if _, err := sign(t, s, req, 5*time.Second); err != nil {
		t.Fatal(err) // an open connection for the outage to cut
	}
	for _, mode := range []fakecas.OutageMode{fakecas.OutageDrop, fakecas.OutageUnavailable} {
		f.SetOutage(mode)
		req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
		_, err := sign(t, s, req, time.Second)
		if !errors.Is(err, backends.ErrUnavailable) {
			t.Fatalf("outage %d: err = %v, want ErrUnavailable", mode, err)
		}
		f.SetOutage(fakecas.NoOutage)
		chain, err := sign(t, s, req, 10*time.Second)
		if err != nil {
			t.Fatalf("after outage %d: %v", mode, err)
		}
		backendtest.CheckIssued(t, s, req, chain)
	}
}

func TestLostAnswerIsRetriedIdempotently(t *testing.T) {
	f := startFake(t, fakecas.Options{})
	s := newSigner(t, f, nil)
	f.DropAnswers("CreateCertificate", 1)
	req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	chain, err := sign(t, s, req, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if calls, issued := f.Calls("CreateCertificate"), f.IssuedCount(); calls != 2 || issued != 1 {
		t.Errorf("%d calls, %d issued; want 2 calls and 1 certificate", calls, issued)
	}
	again, err := sign(t, s, req, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !again[0].Equal(chain[0]) || f.IssuedCount() != 1 {
		t.Error("repeating the request issued a second certificate")
	}
}

func TestPoolTruncatesLifetime(t *testing.T) {
	f := startFake(t, fakecas.Options{MaximumLifetime: 30 * time.Minute})
	s := newSigner(t, f, nil)
	req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	chain, err := sign(t, s, req, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(chain[0].NotAfter); d > 31*time.Minute {
		t.Errorf("leaf lives %v more, want at most the pool's 30m", d)
	}
}

func TestTrustAnchors(t *testing.T) {
	f := startFake(t, fakecas.Options{CAs: []string{"ca-1", "ca-2"}})
	t.Run("from the pool", func(t *testing.T) {
		s := newSigner(t, f, nil)
		got, err := s.TrustAnchors(context.Background())
		if err != nil || len(got) != 2 || !got[0].Equal(f.Root("ca-1")) || !got[1].Equal(f.Root("ca-2")) {
			t.Fatalf("TrustAnchors = %d certs, %v; want both CAs' roots", len(got), err)
		}
		before := f.Calls("FetchCaCerts")
		_, _ = s.TrustAnchors(context.Background())
		if f.Calls("FetchCaCerts") != before {
			t.Error("trust anchors were fetched again instead of reused")
		}
	})
	t.Run("from a file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "roots.pem")
		data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.Root("ca-2").Raw})
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		before := f.Calls("FetchCaCerts")
		s := newSigner(t, f, map[string]any{"trustAnchorsFile": path})
		got, err := s.TrustAnchors(context.Background())
		if err != nil || len(got) != 1 || !got[0].Equal(f.Root("ca-2")) {
			t.Fatalf("TrustAnchors = %v, %v; want the file's root", got, err)
		}
		if f.Calls("FetchCaCerts") != before {
			t.Error("configured anchors must not be fetched")
		}
	})
}
