package awspca_test

import (
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
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/backends/awspca"
	"github.com/meshca/broker/backends/backendtest"
	fakepca "github.com/meshca/broker/integration/fakes/awspca"
)

const spiffeID = "spiffe://cluster.local/ns/default/sa/bench"

// awsEnv gives the SDK's default credential chain the fake's static keys
// and nothing else to find (no shared files, no instance metadata).
func awsEnv(t testing.TB, secret string) {
	none := filepath.Join(t.TempDir(), "none")
	t.Setenv("AWS_ACCESS_KEY_ID", fakepca.DefaultAccessKeyID)
	t.Setenv("AWS_SECRET_ACCESS_KEY", secret)
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_CONFIG_FILE", none)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", none)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
}

// testLogger shows the backend's log with the test's output, only when
// it fails or runs with -v.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

func startFake(t testing.TB, opts fakepca.Options) *fakepca.Server {
	t.Helper()
	if opts.KeyAlgorithm == "" {
		opts.KeyAlgorithm = "EC_prime256v1" // fast to generate
	}
	f, err := fakepca.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return f
}

// newSigner builds the backend through the registry, from JSON as the
// broker's configuration loader hands it over.
func newSigner(t testing.TB, f *fakepca.Server, extra map[string]any) backends.Signer {
	t.Helper()
	awsEnv(t, fakepca.DefaultSecretAccessKey)
	cfg := map[string]any{"caArn": f.CAArn, "endpoint": f.URL, "pollInterval": "20ms"}
	for k, v := range extra {
		cfg[k] = v
	}
	raw, _ := json.Marshal(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := backends.New(ctx, awspca.Type, backends.Options{Config: raw, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func sign(t *testing.T, s backends.Signer, req *backends.Request, timeout time.Duration) ([]*x509.Certificate, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return s.Sign(ctx, req)
}

func TestConformance(t *testing.T) {
	for _, alg := range []string{"RSA_2048", "EC_prime256v1"} {
		t.Run(alg, func(t *testing.T) {
			f := startFake(t, fakepca.Options{KeyAlgorithm: alg})
			s := newSigner(t, f, nil)
			backendtest.Run(t, s, spiffeID)
			want := map[string]string{"RSA_2048": "SHA256WITHRSA", "EC_prime256v1": "SHA256WITHECDSA"}[alg]
			if got := f.LastIssueRequest().SigningAlgorithm; got != want {
				t.Errorf("SigningAlgorithm = %s, want %s (derived from the CA's key)", got, want)
			}
		})
	}
}

func TestIssueRequestOnTheWire(t *testing.T) {
	f := startFake(t, fakepca.Options{})
	s := newSigner(t, f, nil)
	req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	chain, err := sign(t, s, req, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	in := f.LastIssueRequest()
	if in.TemplateArn != awspca.DefaultTemplateArn {
		t.Errorf("TemplateArn = %q", in.TemplateArn)
	}
	if in.Validity == nil || in.Validity.Type != "ABSOLUTE" || in.Validity.Value != req.Template.NotAfter.Unix() {
		t.Errorf("Validity = %+v, want ABSOLUTE %d", in.Validity, req.Template.NotAfter.Unix())
	}
	if in.ValidityNotBefore == nil || in.ValidityNotBefore.Value != req.Template.NotBefore.Unix() {
		t.Errorf("ValidityNotBefore = %+v", in.ValidityNotBefore)
	}
	if n := len(in.IdempotencyToken); n == 0 || n > 36 {
		t.Errorf("IdempotencyToken %q: length %d not in 1..36", in.IdempotencyToken, n)
	}
	if !strings.HasPrefix(string(in.Csr), "-----BEGIN CERTIFICATE REQUEST-----") {
		t.Errorf("Csr is not PEM: %.40q", in.Csr)
	}
	pt := in.ApiPassthrough
	if pt == nil || pt.Extensions == nil || len(pt.Extensions.SubjectAlternativeNames) != 1 ||
		pt.Extensions.SubjectAlternativeNames[0].UniformResourceIdentifier == nil ||
		*pt.Extensions.SubjectAlternativeNames[0].UniformResourceIdentifier != spiffeID {
		t.Fatalf("ApiPassthrough SANs = %+v", pt)
	}
	if pt.Subject != nil {
		t.Errorf("ApiPassthrough.Subject = %+v, want none for an empty template subject", pt.Subject)
	}
	leaf := chain[0]
	if len(leaf.Subject.Names) != 0 {
		t.Errorf("leaf subject %q, want empty", leaf.Subject)
	}
	if !sanCritical(leaf) {
		t.Errorf("leaf with an empty subject must have a critical SAN extension")
	}
	if len(chain) != 3 || !chain[2].Equal(f.Root()) || !chain[1].Equal(f.Subordinate()) {
		t.Errorf("chain has %d certificates, want leaf, subordinate, root", len(chain))
	}
}

func sanCritical(c *x509.Certificate) bool {
	for _, e := range c.Extensions {
		if e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 17}) {
			return e.Critical
		}
	}
	return false
}

func TestPollsWhileInProgress(t *testing.T) {
	f := startFake(t, fakepca.Options{})
	s := newSigner(t, f, nil)
	f.SetInProgressPolls(3)
	req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	chain, err := sign(t, s, req, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	backendtest.CheckIssued(t, s, req, chain)
	if got := f.Calls("GetCertificate"); got != 4 {
		t.Errorf("GetCertificate called %d times, want 4 (3 in progress, then issued)", got)
	}
}

func TestInProgressBeyondDeadlineIsUnavailable(t *testing.T) {
	f := startFake(t, fakepca.Options{})
	s := newSigner(t, f, nil)
	f.SetInProgressPolls(1 << 30)
	req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	_, err := sign(t, s, req, 500*time.Millisecond)
	if !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
}

func TestThrottledThenIssued(t *testing.T) {
	f := startFake(t, fakepca.Options{})
	s := newSigner(t, f, nil)
	f.Throttle(2, "IssueCertificate")
	f.SetInProgressPolls(1)
	req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	chain, err := sign(t, s, req, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	backendtest.CheckIssued(t, s, req, chain)
	if got := f.Calls("IssueCertificate"); got != 3 {
		t.Errorf("IssueCertificate called %d times, want 3", got)
	}
	// Throttling while polling is waited out too.
	f.Throttle(2, "GetCertificate")
	req2, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	if _, err := sign(t, s, req2, 10*time.Second); err != nil {
		t.Fatalf("throttled polls: %v", err)
	}
}

func TestThrottledBeyondDeadline(t *testing.T) {
	f := startFake(t, fakepca.Options{})
	s := newSigner(t, f, nil)
	f.Throttle(1 << 30)
	req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	start := time.Now()
	_, err := sign(t, s, req, 700*time.Millisecond)
	if !errors.Is(err, backends.ErrThrottled) {
		t.Fatalf("err = %v, want ErrThrottled", err)
	}
	if !strings.Contains(err.Error(), "Rate exceeded") {
		t.Errorf("error %q lost AWS's message", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Sign took %v, beyond the caller's 700ms deadline", d)
	}
}

func TestRefusals(t *testing.T) {
	strict := startFake(t, fakepca.Options{StrictEmptySubject: true})
	s := newSigner(t, strict, nil)

	t.Run("empty subject, non-critical SAN", func(t *testing.T) {
		// Go's x509.CreateCertificateRequest never marks the SAN critical:
		// the shape of older ztunnel CSRs, and of the broker's own before
		// they marked it. The hint names whose CSR it was.
		tests := []struct {
			name string
			req  *backends.Request
			want []string
		}{
			{"workload", nonCriticalSANRequest(t, []string{spiffeID}, nil), []string{spiffeID, "ztunnel"}},
			{"serving certificate", nonCriticalSANRequest(t, nil, []string{"istiod.istio-system.svc", "meshca-broker.istio-system.svc"}),
				[]string{"broker's own CSR", "istiod.istio-system.svc, meshca-broker.istio-system.svc"}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				_, err := sign(t, s, tt.req, 5*time.Second)
				if !errors.Is(err, backends.ErrRefused) {
					t.Fatalf("err = %v, want ErrRefused", err)
				}
				for _, want := range append([]string{"MalformedCSRException", "CSR must mark the SAN extension critical when it has an empty subject"}, tt.want...) {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not say %q", err, want)
					}
				}
			})
		}
	})

	t.Run("istio sidecar CSR", func(t *testing.T) {
		// Istio's agent sends subject "O=" and a critical SAN extension;
		// Private CA accepts that even in strict mode.
		req := istioStyleRequest(t)
		chain, err := sign(t, s, req, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		backendtest.CheckIssued(t, s, req, chain)
	})

	t.Run("O= with a non-critical SAN", func(t *testing.T) {
		// The fake's documented reading: a subject with an RDN, even an
		// empty-valued one, is not empty for Private CA's SAN rule.
		req := istioStyleRequestWith(t, time.Now().Add(time.Hour).Truncate(time.Second), false)
		chain, err := sign(t, s, req, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		backendtest.CheckIssued(t, s, req, chain)
	})

	t.Run("bad CSR signature", func(t *testing.T) {
		req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
		raw := append([]byte(nil), req.CSR.Raw...)
		raw[len(raw)-3] ^= 0xff // inside the signature
		bad := *req.CSR
		bad.Raw = raw
		req.CSR = &bad
		_, err := sign(t, s, req, 5*time.Second)
		if !errors.Is(err, backends.ErrRefused) || !strings.Contains(err.Error(), "MalformedCSRException") {
			t.Fatalf("err = %v, want ErrRefused with MalformedCSRException", err)
		}
		if strict.Calls("IssueCertificate") == 0 {
			t.Error("no IssueCertificate reached the fake")
		}
	})

	t.Run("CA disabled", func(t *testing.T) {
		strict.SetStatus("DISABLED")
		defer strict.SetStatus("ACTIVE")
		_, err := sign(t, s, istioStyleRequest(t), 5*time.Second)
		if !errors.Is(err, backends.ErrRefused) || !strings.Contains(err.Error(), "InvalidStateException") {
			t.Fatalf("err = %v, want ErrRefused with InvalidStateException", err)
		}
	})

	t.Run("lifetime beyond the CA", func(t *testing.T) {
		req, _ := backendtest.NewRequest(t, spiffeID, 365*24*time.Hour)
		req = istioStyleRequestFor(t, req.Template.NotAfter)
		_, err := sign(t, s, req, 5*time.Second)
		if !errors.Is(err, backends.ErrRefused) || !strings.Contains(err.Error(), "exceeds") {
			t.Fatalf("err = %v, want ErrRefused naming the CA's validity", err)
		}
	})
}

func TestWrongSecretIsRefusedAtStartup(t *testing.T) {
	f := startFake(t, fakepca.Options{})
	awsEnv(t, "not-the-secret")
	raw, _ := json.Marshal(map[string]any{"caArn": f.CAArn, "endpoint": f.URL})
	_, err := backends.New(context.Background(), awspca.Type, backends.Options{Config: raw, Logger: testLogger(t)})
	if !errors.Is(err, backends.ErrRefused) || !strings.Contains(err.Error(), "InvalidSignatureException") {
		t.Fatalf("err = %v, want ErrRefused with InvalidSignatureException", err)
	}
}

func TestOutageThenRecovery(t *testing.T) {
	f := startFake(t, fakepca.Options{})
	s := newSigner(t, f, nil)
	req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	if _, err := sign(t, s, req, 5*time.Second); err != nil {
		t.Fatal(err) // leaves a kept-alive connection for the outage to cut
	}
	for _, mode := range []fakepca.OutageMode{fakepca.OutageDrop, fakepca.Outage503} {
		f.SetOutage(mode)
		req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
		_, err := sign(t, s, req, time.Second)
		if !errors.Is(err, backends.ErrUnavailable) {
			t.Fatalf("outage %d: err = %v, want ErrUnavailable", mode, err)
		}
		f.SetOutage(fakepca.NoOutage)
		chain, err := sign(t, s, req, 5*time.Second)
		if err != nil {
			t.Fatalf("after outage %d: %v", mode, err)
		}
		backendtest.CheckIssued(t, s, req, chain)
	}
}

func TestLostAnswerIsRetriedIdempotently(t *testing.T) {
	f := startFake(t, fakepca.Options{})
	s := newSigner(t, f, nil)
	f.DropAnswers("IssueCertificate", 1)
	req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	chain, err := sign(t, s, req, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if calls, issued := f.Calls("IssueCertificate"), f.IssuedCount(); calls != 2 || issued != 1 {
		t.Errorf("IssueCertificate calls %d, certificates issued %d; want 2 calls, 1 certificate", calls, issued)
	}
	// The same approved request again within the token's five minutes
	// is the same certificate.
	again, err := sign(t, s, req, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !again[0].Equal(chain[0]) || f.IssuedCount() != 1 {
		t.Errorf("repeated request issued a second certificate")
	}
}

func TestTrustAnchors(t *testing.T) {
	f := startFake(t, fakepca.Options{})
	t.Run("from the CA", func(t *testing.T) {
		s := newSigner(t, f, nil)
		got, err := s.TrustAnchors(context.Background())
		if err != nil || len(got) != 1 || !got[0].Equal(f.Root()) {
			t.Fatalf("TrustAnchors = %v, %v; want the fake's root", got, err)
		}
		before := f.Calls("GetCertificateAuthorityCertificate")
		_, _ = s.TrustAnchors(context.Background())
		if f.Calls("GetCertificateAuthorityCertificate") != before {
			t.Error("trust anchors were read again instead of reused")
		}
	})
	t.Run("from a file", func(t *testing.T) {
		other, err := fakepca.Start(fakepca.Options{KeyAlgorithm: "EC_prime256v1"})
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		path := filepath.Join(t.TempDir(), "roots.pem")
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: other.Root().Raw}), 0o600); err != nil {
			t.Fatal(err)
		}
		s := newSigner(t, f, map[string]any{"trustAnchorsFile": path})
		got, err := s.TrustAnchors(context.Background())
		if err != nil || len(got) != 1 || !got[0].Equal(other.Root()) {
			t.Fatalf("TrustAnchors = %v, %v; want the file's root", got, err)
		}
		if f.Calls("GetCertificateAuthorityCertificate") > 1 {
			t.Error("configured anchors must not be read from the CA")
		}
	})
}

func TestBlankTemplateTakesUsagesFromPassthrough(t *testing.T) {
	f := startFake(t, fakepca.Options{})
	s := newSigner(t, f, map[string]any{"templateArn": "arn:aws:acm-pca:::template/BlankEndEntityCertificate_APICSRPassthrough/V1"})
	req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	req.Template.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	req.Template.KeyUsage = x509.KeyUsageDigitalSignature
	chain, err := sign(t, s, req, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature || len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Errorf("leaf usages %v %v, want the template's", leaf.KeyUsage, leaf.ExtKeyUsage)
	}
}

// istioStyleRequest builds a request whose CSR looks like the Istio agent's:
// subject "O=" and a critical SAN extension carrying the SPIFFE ID.
func istioStyleRequest(t *testing.T) *backends.Request {
	return istioStyleRequestFor(t, time.Now().Add(time.Hour).Truncate(time.Second))
}

func istioStyleRequestFor(t *testing.T, notAfter time.Time) *backends.Request {
	t.Helper()
	return istioStyleRequestWith(t, notAfter, true)
}

// istioStyleRequestWith is istioStyleRequestFor with the SAN extension's
// criticality chosen.
func istioStyleRequestWith(t *testing.T, notAfter time.Time, critical bool) *backends.Request {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(spiffeID)
	san, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(spiffeID)}})
	if err != nil {
		t.Fatal(err)
	}
	csr := backendtest.CSR(t, key, &x509.CertificateRequest{
		Subject:         pkix.Name{Organization: []string{""}},
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Critical: critical, Value: san}},
	})
	req := backendtest.NewRequestForKey(t, key, spiffeID, time.Hour)
	req.CSR = csr
	req.Template.URIs = []*url.URL{u}
	req.Template.NotAfter = notAfter
	return req
}

// nonCriticalSANRequest is an approved request whose CSR has an empty
// subject and the names in a non-critical SAN extension, as
// crypto/x509.CreateCertificateRequest makes it: with URIs a workload's,
// with DNS names only the shape of the broker's serving certificate.
func nonCriticalSANRequest(t *testing.T, uris, dnsNames []string) *backends.Request {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var us []*url.URL
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		us = append(us, u)
	}
	req := backendtest.NewRequestForKey(t, key, spiffeID, time.Hour)
	req.CSR = backendtest.CSR(t, key, &x509.CertificateRequest{URIs: us, DNSNames: dnsNames})
	req.Template.URIs, req.Template.DNSNames = us, dnsNames
	if len(us) == 0 {
		req.Template.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	return req
}

func TestStartsWhileCAUnreachable(t *testing.T) {
	f := startFake(t, fakepca.Options{})
	f.SetOutage(fakepca.Outage503)
	awsEnv(t, fakepca.DefaultSecretAccessKey)
	raw, _ := json.Marshal(map[string]any{"caArn": f.CAArn, "endpoint": f.URL, "pollInterval": "20ms"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := backends.New(ctx, awspca.Type, backends.Options{Config: raw, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("an unreachable CA must not stop the broker from starting: %v", err)
	}
	f.SetOutage(fakepca.NoOutage)
	req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	chain, err := sign(t, s, req, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	backendtest.CheckIssued(t, s, req, chain)
	if f.LastIssueRequest().SigningAlgorithm != "SHA256WITHECDSA" {
		t.Errorf("signing algorithm not learnt after recovery")
	}
}

// TestFakeWantsSigV4 checks the fake itself: a request without the SDK's
// signature is refused the way the service front end does.
func TestFakeWantsSigV4(t *testing.T) {
	f := startFake(t, fakepca.Options{})
	for name, hdr := range map[string]map[string]string{
		"unsigned":     {"X-Amz-Target": "ACMPrivateCA.DescribeCertificateAuthority", "Content-Type": "application/x-amz-json-1.1"},
		"unknown op":   {"X-Amz-Target": "ACMPrivateCA.Nope", "Content-Type": "application/x-amz-json-1.1"},
		"wrong target": {"X-Amz-Target": "CertificateManager.DescribeCertificate", "Content-Type": "application/x-amz-json-1.1"},
	} {
		t.Run(name, func(t *testing.T) {
			r, _ := http.NewRequest(http.MethodPost, f.URL+"/", strings.NewReader(`{"CertificateAuthorityArn":"`+f.CAArn+`"}`))
			for k, v := range hdr {
				r.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(r)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body struct {
				Type string `json:"__type"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&body)
			if resp.StatusCode != 400 || body.Type == "" || !strings.HasPrefix(resp.Header.Get("X-Amzn-ErrorType"), body.Type) {
				t.Errorf("status %d, __type %q, X-Amzn-ErrorType %q", resp.StatusCode, body.Type, resp.Header.Get("X-Amzn-ErrorType"))
			}
			if name == "unsigned" && body.Type != "MissingAuthenticationTokenException" {
				t.Errorf("__type %q, want MissingAuthenticationTokenException", body.Type)
			}
		})
	}
}
