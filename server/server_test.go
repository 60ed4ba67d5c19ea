package server

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshca/broker/authn"
	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/backends/localca"
	"github.com/meshca/broker/caclient"
	"github.com/meshca/broker/policy"
	authv1 "github.com/meshca/broker/proto/istio/v1/auth"
	"github.com/meshca/broker/trust"
)

const cart = "spiffe://cluster.local/ns/shop/sa/cart"

// tokenTable authenticates bearer tokens from a fixed table: a test peer
// standing in for a token authority, so these tests exercise the server's
// own logic (the real authenticators have their own tests against a real
// API server).
type tokenTable struct {
	ids  map[string]string
	err  error
	seen atomic.Int32
}

func (a *tokenTable) Name() string { return "table" }

func (a *tokenTable) Authenticate(_ context.Context, r *authn.Request) (*authn.Identity, error) {
	a.seen.Add(1)
	if a.err != nil {
		return nil, a.err
	}
	if r.BearerToken == "" {
		return nil, fmt.Errorf("%w: no token", authn.ErrDenied)
	}
	id, ok := a.ids[r.BearerToken]
	if !ok {
		return nil, fmt.Errorf("%w: unknown token", authn.ErrDenied)
	}
	return &authn.Identity{ID: spiffeid.RequireFromString(id)}, nil
}

// faultySigner wraps a real signer and can fail or tamper with the chain.
type faultySigner struct {
	backends.Signer
	err    error
	tamper func(chain []*x509.Certificate) []*x509.Certificate
	// delay holds every signing this long; calls counts PKI signings.
	delay time.Duration
	calls atomic.Int32
}

func (f *faultySigner) Sign(ctx context.Context, r *backends.Request) ([]*x509.Certificate, error) {
	f.calls.Add(1)
	if f.delay > 0 {
		select {
		case <-time.After(f.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if f.err != nil {
		return nil, f.err
	}
	chain, err := f.Signer.Sign(ctx, r)
	if err == nil && f.tamper != nil {
		chain = f.tamper(chain)
	}
	return chain, err
}

type fixture struct {
	srv    *Server
	signer *faultySigner
	authn  *tokenTable
	ca     *localca.CA
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	ca, _, err := localca.LoadOrCreate(t.TempDir(), localca.Config{})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.New(policy.Defaults())
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{signer: &faultySigner{Signer: ca}, authn: &tokenTable{ids: map[string]string{"cart-token": cart}}, ca: ca}
	f.srv, err = New(Config{
		Authenticator: f.authn,
		Policy:        pol,
		Signer:        f.signer,
		Trust:         mustBundle(t, ca.TrustAnchors),
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func ctxWith(kv ...string) context.Context {
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs(kv...))
}

func csrFor(t testing.TB, spiffeID string) string {
	t.Helper()
	key, err := caclient.NewKey(true)
	if err != nil {
		t.Fatal(err)
	}
	s, err := caclient.CSR(key, spiffeID)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCreateCertificateIssuesAnIstioShapedChain(t *testing.T) {
	f := newFixture(t)
	md, _ := structpb.NewStruct(map[string]any{"CertSigner": ""})
	resp, err := f.srv.CreateCertificate(ctxWith("authorization", "Bearer cart-token", "clusterid", "Kubernetes"),
		&authv1.IstioCertificateRequest{Csr: csrFor(t, cart), ValidityDuration: 3600, Metadata: md})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.CertChain) != 2 {
		t.Fatalf("chain has %d entries, want leaf and root", len(resp.CertChain))
	}
	var certs []*x509.Certificate
	for i, p := range resp.CertChain {
		block, rest := pem.Decode([]byte(p))
		if block == nil || len(rest) != 0 || !strings.HasSuffix(p, "\n") {
			t.Fatalf("entry %d is not one PEM certificate ending in a newline", i)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	leaf, root := certs[0], certs[1]
	anchors, _ := f.ca.TrustAnchors(context.Background())
	if !root.Equal(anchors[0]) {
		t.Error("last entry is not the root")
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != cart || leaf.IsCA {
		t.Errorf("leaf: URIs %v IsCA %v", leaf.URIs, leaf.IsCA)
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != time.Hour+time.Minute {
		t.Errorf("lifetime %s, want 1h (+1m backdate)", got)
	}
	// Istio's CA marks the SAN critical because the subject is empty.
	for _, e := range leaf.Extensions {
		if e.Id.String() == "2.5.29.17" && !e.Critical {
			t.Error("SAN extension is not critical with an empty subject")
		}
	}
}

func TestCreateCertificateStatusCodes(t *testing.T) {
	otherKeyCSR := func(t testing.TB) string {
		k, _ := rsa.GenerateKey(rand.Reader, 2048)
		s, _ := caclient.CSR(k, "spiffe://cluster.local/ns/shop/sa/admin")
		return s
	}
	cases := []struct {
		name    string
		ctx     context.Context
		csr     func(t testing.TB) string
		setup   func(f *fixture)
		code    codes.Code
		mention string
	}{
		{"no token", ctxWith(), func(t testing.TB) string { return csrFor(t, cart) }, nil, codes.Unauthenticated, "no token"},
		{"bad token", ctxWith("authorization", "Bearer nope"), func(t testing.TB) string { return csrFor(t, cart) }, nil, codes.Unauthenticated, "unknown token"},
		{"not a bearer scheme", ctxWith("authorization", "Basic cart-token"), func(t testing.TB) string { return csrFor(t, cart) }, nil, codes.Unauthenticated, ""},
		{"authority down", ctxWith("authorization", "Bearer cart-token"), func(t testing.TB) string { return csrFor(t, cart) },
			func(f *fixture) { f.authn.err = fmt.Errorf("%w: api server unreachable", authn.ErrUnavailable) }, codes.Unavailable, "unreachable"},
		{"another identity", ctxWith("authorization", "Bearer cart-token"), otherKeyCSR, nil, codes.PermissionDenied, "sa/admin"},
		{"garbage CSR", ctxWith("authorization", "Bearer cart-token"), func(testing.TB) string { return "garbage" }, nil, codes.InvalidArgument, "PEM"},
		{"backend unreachable", ctxWith("authorization", "Bearer cart-token"), func(t testing.TB) string { return csrFor(t, cart) },
			func(f *fixture) { f.signer.err = fmt.Errorf("vault: %w: connection refused", backends.ErrUnavailable) }, codes.Unavailable, "connection refused"},
		{"backend throttled", ctxWith("authorization", "Bearer cart-token"), func(t testing.TB) string { return csrFor(t, cart) },
			func(f *fixture) { f.signer.err = fmt.Errorf("pca: %w: rate exceeded", backends.ErrThrottled) }, codes.ResourceExhausted, "rate exceeded"},
		{"backend refuses", ctxWith("authorization", "Bearer cart-token"), func(t testing.TB) string { return csrFor(t, cart) },
			func(f *fixture) {
				f.signer.err = fmt.Errorf("vault: %w: URI SAN not allowed by role", backends.ErrRefused)
			}, codes.FailedPrecondition, "not allowed by role"},
		{"backend too slow", ctxWith("authorization", "Bearer cart-token"), func(t testing.TB) string { return csrFor(t, cart) },
			func(f *fixture) { f.signer.err = fmt.Errorf("step-ca: %w", context.DeadlineExceeded) }, codes.Unavailable, "in time"},
		{"backend swaps the identity", ctxWith("authorization", "Bearer cart-token"), func(t testing.TB) string { return csrFor(t, cart) },
			func(f *fixture) {
				f.signer.tamper = func([]*x509.Certificate) []*x509.Certificate {
					// Sign a correct-looking certificate for another workload.
					r := *mustRequest(t, "spiffe://cluster.local/ns/shop/sa/admin")
					c, _ := f.ca.Sign(context.Background(), &r)
					return c
				}
			}, codes.Internal, "failed the broker's verification"},
		{"backend returns nothing", ctxWith("authorization", "Bearer cart-token"), func(t testing.TB) string { return csrFor(t, cart) },
			func(f *fixture) { f.signer.tamper = func([]*x509.Certificate) []*x509.Certificate { return nil } }, codes.Internal, "verification"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			if tc.setup != nil {
				tc.setup(f)
			}
			resp, err := f.srv.CreateCertificate(tc.ctx, &authv1.IstioCertificateRequest{Csr: tc.csr(t)})
			if resp != nil {
				t.Fatal("a refused request returned a response")
			}
			st := status.Convert(err)
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.mention) {
				t.Fatalf("got %s %q, want %s mentioning %q", st.Code(), st.Message(), tc.code, tc.mention)
			}
		})
	}
}

func mustRequest(t testing.TB, id string) *backends.Request {
	key, _ := caclient.NewKey(true)
	s, _ := caclient.CSR(key, id)
	block, _ := pem.Decode([]byte(s))
	csr, _ := x509.ParseCertificateRequest(block.Bytes)
	u, _ := url.Parse(id)
	now := time.Now()
	return &backends.Request{CSR: csr, Template: policy.WorkloadTemplate(spiffeid.RequireFromURI(u), now, now.Add(time.Hour))}
}

// FuzzCreateCertificate drives the whole issue path with arbitrary CSRs,
// lifetimes, metadata and tokens: it must never panic, and whatever it
// issues must name exactly the authenticated caller.
func FuzzCreateCertificate(f *testing.F) {
	fx := newFixture(f)
	f.Add(csrFor(f, cart), int64(3600), []byte(`{"CertSigner":""}`), "cart-token")
	f.Add(csrFor(f, "spiffe://cluster.local/ns/shop/sa/admin"), int64(0), []byte(`{}`), "cart-token")
	f.Add("", int64(-1), []byte(`{"ImpersonatedIdentity":"x"}`), "")
	f.Fuzz(func(t *testing.T, csr string, validity int64, mdJSON []byte, token string) {
		var md *structpb.Struct
		if s := (&structpb.Struct{}); s.UnmarshalJSON(mdJSON) == nil {
			md = s
		}
		ctx := ctxWith("authorization", "Bearer "+token)
		resp, err := fx.srv.CreateCertificate(ctx, &authv1.IstioCertificateRequest{Csr: csr, ValidityDuration: validity, Metadata: md})
		if err != nil {
			if _, ok := status.FromError(err); !ok {
				t.Fatalf("error is not a gRPC status: %v", err)
			}
			if status.Code(err) == codes.Internal || status.Code(err) == codes.Unknown {
				t.Fatalf("unexpected %v", err)
			}
			return
		}
		if token != "cart-token" {
			t.Fatalf("issued to an unauthenticated caller (token %q)", token)
		}
		block, _ := pem.Decode([]byte(resp.CertChain[0]))
		leaf, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != cart || len(leaf.DNSNames) != 0 || leaf.IsCA {
			t.Fatalf("issued a certificate beyond the caller's identity: %v %v", leaf.URIs, leaf.DNSNames)
		}
	})
}

// TestEveryOutcomeIsAuditedOnce: one log line per request, saying who
// asked, what was decided and, for an issuance, which certificate.
func TestEveryOutcomeIsAuditedOnce(t *testing.T) {
	f := newFixture(t)
	var buf strings.Builder
	f.srv.cfg.Logger = slog.New(slog.NewJSONHandler(&buf, nil))
	ctx := ctxWith("authorization", "Bearer cart-token")
	resp, err := f.srv.CreateCertificate(ctx, &authv1.IstioCertificateRequest{Csr: csrFor(t, cart), ValidityDuration: 7200})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.srv.CreateCertificate(ctx, &authv1.IstioCertificateRequest{Csr: csrFor(t, "spiffe://cluster.local/ns/shop/sa/admin")}); err == nil {
		t.Fatal("expected a refusal")
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d audit lines, want 2:\n%s", len(lines), buf.String())
	}
	block, _ := pem.Decode([]byte(resp.CertChain[0]))
	leaf, _ := x509.ParseCertificate(block.Bytes)
	for _, want := range []string{`"msg":"certificate issued"`, `"identity":"` + cart + `"`, `"authn":"table"`, `"serial":"` + fmt.Sprintf("%x", leaf.SerialNumber) + `"`, `"grantedTTL":"2h0m0s"`} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("issuance line lacks %s: %s", want, lines[0])
		}
	}
	for _, want := range []string{`"msg":"certificate request refused"`, `"identity":"` + cart + `"`, `"code":"PermissionDenied"`, `sa/admin`} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("refusal line lacks %s: %s", want, lines[1])
		}
	}
}

func mustBundle(t testing.TB, src trust.Source) *trust.Bundle {
	t.Helper()
	b, err := trust.LoadBundle(context.Background(), trust.BundleConfig{Backend: src})
	if err != nil {
		t.Fatal(err)
	}
	return b
}
