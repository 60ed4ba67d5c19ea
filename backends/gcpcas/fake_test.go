package gcpcas_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	privateca "cloud.google.com/go/security/privateca/apiv1"
	"cloud.google.com/go/security/privateca/apiv1/privatecapb"
	"github.com/google/uuid"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/backends/backendtest"
	"github.com/meshca/broker/backends/gcpcas"
	"github.com/meshca/broker/dn"
	fakecas "github.com/meshca/broker/integration/fakes/gcpcas"
	"github.com/meshca/broker/verify"
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
	req := backendtest.NewRequestForKey(t, key, spiffeID, time.Hour)
	req.CSR = backendtest.CSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{u}, DNSNames: []string{"admin.example.com"}})
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

// TestOutageThenRecovery: during an outage Sign fails with Unavailable;
// afterwards the same signer issues again. Once the outage has spent the
// retry budget the backend makes one call per Sign and no retries of its
// own, so recovery comes through the caller's retries, as the Istio agent
// makes them.
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
		var chain []*x509.Certificate
		attempts, deadline := 0, time.Now().Add(10*time.Second)
		for {
			attempts++
			chain, err = sign(t, s, req, 2*time.Second)
			if err == nil || !backends.Retryable(err) || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond) // the agent's backoff, shortened
		}
		if err != nil {
			t.Fatalf("after outage %d, %d agent attempts: %v", mode, attempts, err)
		}
		t.Logf("outage %d: served after %d agent attempt(s)", mode, attempts)
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

// TestHostileSubjects: CSR subjects a workload could hope CA Service copies
// (including attribute types crypto/x509's parsed Name drops) never reach
// a certificate the broker accepts. Beyond the conformance case (which
// accepts a copy that verification catches), this backend must not let it
// come to that: with the fake copying a pem_csr's raw subject as CA Service
// does, each goes as config and the leaf has the approved empty subject.
func TestHostileSubjects(t *testing.T) {
	f := startFake(t, fakecas.Options{})
	s := newSigner(t, f, nil)
	backendtest.RunHostileSubjects(t, s, spiffeID)
	if n := f.Calls("CreateCertificate"); n != len(backendtest.HostileSubjects()) {
		t.Errorf("%d CreateCertificate calls for %d requests", n, len(backendtest.HostileSubjects()))
	}
	for _, h := range backendtest.HostileSubjects() {
		t.Run("issued empty/"+h.Name, func(t *testing.T) {
			req := backendtest.NewRequestWithSubject(t, spiffeID, h.RawSubject, time.Hour)
			chain, err := sign(t, s, req, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if f.LastCreateRequest().GetCertificate().GetConfig() == nil {
				t.Error("sent as pem_csr")
			}
			if valued, err := dn.Valued(chain[0].RawSubject); err != nil || len(valued) > 0 {
				t.Errorf("leaf subject [%s] (%v), want the approved empty one", dn.Describe(valued), err)
			}
			backendtest.CheckIssued(t, s, req, chain)
		})
	}
}

func rawClient(t testing.TB, f *fakecas.Server) *privateca.CertificateAuthorityClient {
	t.Helper()
	c, err := privateca.NewCertificateAuthorityClient(context.Background(), option.WithEndpoint(f.Addr), option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	if err != nil {
		t.Fatal(err)
	}
	// No client-side retries: each call is one call.
	c.CallOptions.CreateCertificate, c.CallOptions.FetchCaCerts = nil, nil
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func sanOf(c *x509.Certificate) *pkix.Extension {
	for i, e := range c.Extensions {
		if e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 17}) {
			return &c.Extensions[i]
		}
	}
	return nil
}

// TestFakeCopiesPemCSR pins the fake to what CA Service does with a pem_csr
// (a pool allowing subject and SAN passthrough): the subject's DER and the
// subjectAltName's DER are copied as they are, whatever crypto/x509 would
// make of them; other requested extensions pass through; the pool's
// baseline decides key usage and basic constraints.
func TestFakeCopiesPemCSR(t *testing.T) {
	f := startFake(t, fakecas.Options{})
	client := rawClient(t, f)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	str := func(tag int, s string) asn1.RawValue {
		return asn1.RawValue{Class: asn1.ClassUniversal, Tag: tag, Bytes: []byte(s)}
	}
	name := func(rdns ...pkix.RelativeDistinguishedNameSET) []byte {
		b, _ := asn1.Marshal(pkix.RDNSequence(rdns))
		return b
	}
	var (
		cn    = asn1.ObjectIdentifier{2, 5, 4, 3}
		o     = asn1.ObjectIdentifier{2, 5, 4, 10}
		email = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}
		dc    = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 25}
		uid   = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 1}
	)
	uri := asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(spiffeID)}
	dirName := asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: name(pkix.RelativeDistinguishedNameSET{{Type: cn, Value: "admin"}})}
	regID := asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 8, Bytes: []byte{0x2a, 0x03, 0x04}} // 1.2.3.4
	san := func(names ...asn1.RawValue) pkix.Extension {
		b, _ := asn1.Marshal(names)
		return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: b}
	}
	custom := pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Value: []byte{0x0c, 0x02, 'h', 'i'}}
	caTrue, _ := asn1.Marshal(struct{ IsCA bool }{true})
	tests := []struct {
		name         string
		subject      []byte
		exts         []pkix.Extension
		wantCritical bool
	}{
		{"empty subject, URI", name(), []pkix.Extension{san(uri)}, true},
		{"agent's O=", name(pkix.RelativeDistinguishedNameSET{{Type: o, Value: ""}}), []pkix.Extension{san(uri)}, false},
		{"emailAddress, DC, UID", name(
			pkix.RelativeDistinguishedNameSET{{Type: dc, Value: str(asn1.TagIA5String, "corp")}},
			pkix.RelativeDistinguishedNameSET{{Type: uid, Value: str(asn1.TagUTF8String, "root")}},
			pkix.RelativeDistinguishedNameSET{{Type: email, Value: str(asn1.TagIA5String, "admin@example.com")}}), []pkix.Extension{san(uri)}, false},
		{"multi-valued RDN, T61String", name(pkix.RelativeDistinguishedNameSET{{Type: o, Value: ""}, {Type: cn, Value: str(asn1.TagT61String, "admin")}}), []pkix.Extension{san(uri)}, false},
		{"directoryName and registeredID SANs", name(), []pkix.Extension{san(uri, dirName, regID)}, true},
		{"custom extension passes, CA:true does not", name(), []pkix.Extension{san(uri), custom, {Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: caTrue}}, true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{RawSubject: tt.subject, ExtraExtensions: tt.exts}, key)
			if err != nil {
				t.Fatal(err)
			}
			csr, _ := x509.ParseCertificateRequest(der)
			resp, err := client.CreateCertificate(context.Background(), &privatecapb.CreateCertificateRequest{
				Parent: f.PoolName, CertificateId: fmt.Sprintf("copy-%d", i), RequestId: uuid.NewString(),
				Certificate: &privatecapb.Certificate{
					CertificateConfig: &privatecapb.Certificate_PemCsr{PemCsr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))},
					Lifetime:          durationpb.New(time.Hour),
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			leaves, err := backends.ParseCertificates([]byte(resp.GetPemCertificate()))
			if err != nil {
				t.Fatal(err)
			}
			leaf := leaves[0]
			if !bytes.Equal(leaf.RawSubject, csr.RawSubject) {
				t.Errorf("leaf subject %x, CSR's %x", leaf.RawSubject, csr.RawSubject)
			}
			got, want := sanOf(leaf), sanOf(&x509.Certificate{Extensions: csr.Extensions})
			if got == nil || !bytes.Equal(got.Value, want.Value) {
				t.Fatalf("leaf SAN %v, CSR's %x", got, want.Value)
			}
			if got.Critical != tt.wantCritical {
				t.Errorf("SAN critical = %v, want %v", got.Critical, tt.wantCritical)
			}
			if leaf.IsCA || leaf.KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment || len(leaf.ExtKeyUsage) != 2 {
				t.Errorf("leaf CA=%v KU=%v EKU=%v, want the pool's baseline", leaf.IsCA, leaf.KeyUsage, leaf.ExtKeyUsage)
			}
			for _, e := range tt.exts {
				if e.Id.Equal(custom.Id) && !slices.ContainsFunc(leaf.Extensions, func(x pkix.Extension) bool { return x.Id.Equal(custom.Id) && bytes.Equal(x.Value, custom.Value) }) {
					t.Error("custom extension not passed through")
				}
			}
		})
	}
}

// TestInjectedSubjectIsCaught: a PKI that puts a subject of its own into
// the certificate, in either mode, is caught by the broker's verification.
func TestInjectedSubjectIsCaught(t *testing.T) {
	f := startFake(t, fakecas.Options{})
	s := newSigner(t, f, nil)
	anchors, err := s.TrustAnchors(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	injected, _ := asn1.Marshal(pkix.RDNSequence{
		{{Type: asn1.ObjectIdentifier{2, 5, 4, 10}, Value: "system:masters"}},
		{{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "admin"}},
	})
	agentStyle := func(t *testing.T) *backends.Request {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		req := backendtest.NewRequestForKey(t, key, spiffeID, time.Hour)
		req.CSR = backendtest.CSR(t, key, &x509.CertificateRequest{Subject: pkix.Name{Organization: []string{""}}, URIs: req.Template.URIs})
		return req
	}
	tests := []struct {
		name    string
		req     func(t *testing.T) *backends.Request
		wantPem bool
	}{
		{"pem_csr", func(t *testing.T) *backends.Request { r, _ := backendtest.NewRequest(t, spiffeID, time.Hour); return r }, true},
		{"config (the agent's O=)", agentStyle, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.SetInjectSubject(injected)
			req := tt.req(t)
			chain, err := sign(t, s, req, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.LastCreateRequest().GetCertificate().GetPemCsr() != ""; got != tt.wantPem {
				t.Errorf("pem_csr sent = %v, want %v", got, tt.wantPem)
			}
			if !bytes.Equal(chain[0].RawSubject, injected) {
				t.Fatalf("leaf subject %q, want the injected one", chain[0].Subject)
			}
			if _, err := verify.Chain(req, chain, anchors, time.Now()); !errors.Is(err, verify.ErrMismatch) {
				t.Fatalf("verify.Chain = %v, want ErrMismatch", err)
			} else {
				t.Logf("caught: %v", err)
			}

			f.SetInjectSubject(nil)
			req = tt.req(t)
			chain, err = sign(t, s, req, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := verify.Chain(req, chain, anchors, time.Now()); err != nil {
				t.Fatalf("with injection off: %v", err)
			}
		})
	}
}

// TestRateLimit: beyond the per-method rate the fake answers
// RESOURCE_EXHAUSTED, counting every call; the backend reports it as
// throttled and, drawing on its retry budget, makes close to one call per
// request under sustained limiting.
func TestRateLimit(t *testing.T) {
	t.Run("per method, exact counts under concurrency", func(t *testing.T) {
		f := startFake(t, fakecas.Options{})
		client := rawClient(t, f)
		f.SetRateLimit(0.5, 3) // a token every 2s: the test sees the burst only
		const n = 20
		var ok, exhausted atomic.Int32
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				_, err := client.FetchCaCerts(context.Background(), &privatecapb.FetchCaCertsRequest{CaPool: f.PoolName})
				switch status.Code(err) {
				case codes.OK:
					ok.Add(1)
				case codes.ResourceExhausted:
					exhausted.Add(1)
				default:
					t.Errorf("FetchCaCerts: %v", err)
				}
			})
		}
		wg.Wait()
		if ok.Load() != 3 || exhausted.Load() != n-3 || f.Calls("FetchCaCerts") != n {
			t.Errorf("%d served, %d RESOURCE_EXHAUSTED, %d calls counted; want 3, %d, %d", ok.Load(), exhausted.Load(), f.Calls("FetchCaCerts"), n-3, n)
		}
		// Another method has its own bucket.
		req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
		if _, err := sign(t, newSigner(t, f, nil), req, 5*time.Second); err != nil {
			t.Errorf("CreateCertificate limited by FetchCaCerts' bucket: %v", err)
		}
		f.SetRateLimit(0, 0)
		if _, err := client.FetchCaCerts(context.Background(), &privatecapb.FetchCaCertsRequest{CaPool: f.PoolName}); err != nil {
			t.Errorf("rate limit off: %v", err)
		}
	})

	t.Run("backend under sustained limiting", func(t *testing.T) {
		f := startFake(t, fakecas.Options{})
		s := newSigner(t, f, nil)
		f.SetRateLimit(5, 5)
		const n = 100
		var served, throttled atomic.Int32
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
				_, err := sign(t, s, req, 800*time.Millisecond)
				switch {
				case err == nil:
					served.Add(1)
				case errors.Is(err, backends.ErrThrottled):
					throttled.Add(1)
				default:
					t.Errorf("Sign: %v", err)
				}
			})
		}
		wg.Wait()
		calls := f.Calls("CreateCertificate")
		t.Logf("%d concurrent requests: %d served, %d throttled, %d CreateCertificate calls (%.2f per request), %d issued",
			n, served.Load(), throttled.Load(), calls, float64(calls)/n, f.IssuedCount())
		if int(served.Load()) != f.IssuedCount() {
			t.Errorf("%d served but %d issued", served.Load(), f.IssuedCount())
		}
		if calls > n*3/2 {
			t.Errorf("%d calls for %d requests: the retry budget should hold retries back", calls, n)
		}
	})
}

// TestConcurrentIssuance: counts are exact under concurrency, and the same
// Request sent concurrently (an agent's retry racing its first attempt)
// issues one certificate, returned to every caller.
func TestConcurrentIssuance(t *testing.T) {
	f := startFake(t, fakecas.Options{})
	s := newSigner(t, f, nil)
	const distinct, same = 30, 20
	var wg sync.WaitGroup
	for range distinct {
		wg.Go(func() {
			req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
			if _, err := sign(t, s, req, 10*time.Second); err != nil {
				t.Error(err)
			}
		})
	}
	req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	leaves := make([]*x509.Certificate, same)
	for i := range same {
		wg.Go(func() {
			chain, err := sign(t, s, req, 10*time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			leaves[i] = chain[0]
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if calls, issued := f.Calls("CreateCertificate"), f.IssuedCount(); calls != distinct+same || issued != distinct+1 {
		t.Errorf("%d calls, %d issued; want %d and %d", calls, issued, distinct+same, distinct+1)
	}
	for _, l := range leaves[1:] {
		if !l.Equal(leaves[0]) {
			t.Fatal("the same request got different certificates")
		}
	}
}
