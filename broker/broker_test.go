package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/broker/caclient"
	"github.com/meshca/broker/config"
	"github.com/meshca/broker/devissuer"
)

type env struct {
	b      *Broker
	iss    *devissuer.Issuer
	client *caclient.Client
	roots  *x509.CertPool
}

// start runs a broker on the local CA with a JWKS authenticator for a
// generated issuer: everything real but the cluster.
func start(t testing.TB, mod func(*config.Config)) *env {
	t.Helper()
	iss, err := devissuer.New(devissuer.DefaultIssuer)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	jwksFile := filepath.Join(dir, "jwks.json")
	if err := iss.WriteJWKS(jwksFile); err != nil {
		t.Fatal(err)
	}
	off := false
	cfg := &config.Config{
		Listen:        "127.0.0.1:0",
		MetricsListen: "127.0.0.1:0",
		DataDir:       dir,
		Authn: config.Authn{
			Kubernetes: config.Kubernetes{Enabled: &off},
			JWKS:       []config.JWKS{{Issuer: iss.URL, File: jwksFile, ClusterID: "Kubernetes"}},
		},
	}
	if mod != nil {
		mod(cfg)
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Start(context.Background(), cfg, Options{Listener: lis, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Stop(context.Background()) })
	rootsPEM, err := b.RootsPEM(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootsPEM)
	c, err := caclient.Dial(b.Addr(), roots, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &env{b: b, iss: iss, client: c, roots: roots}
}

func (e *env) token(t testing.TB, ns, sa string) string {
	t.Helper()
	tok, err := e.iss.Token(ns, sa, []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestServingCertificateIsRenewedWithoutRestart(t *testing.T) {
	// A 10m certificate is renewed at two thirds of its life; with the
	// clock as it is, that is checked by shortening nothing but asking the
	// rotator to run its renewal now.
	e := start(t, nil)
	first := e.b.ServingCertificate()
	if err := e.b.rotator.Issue(context.Background()); err != nil {
		t.Fatal(err)
	}
	second := e.b.ServingCertificate()
	if first.Equal(second) {
		t.Fatal("the serving certificate did not change")
	}
	// New connections see the new certificate with no restart.
	conn, err := tls.Dial("tcp", e.b.Addr(), &tls.Config{RootCAs: e.roots, ServerName: "istiod.istio-system.svc", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got := conn.ConnectionState().PeerCertificates[0]; !got.Equal(second) {
		t.Fatal("a new connection was served the old certificate")
	}
}

func TestServingCertificateNamesAndTLSVersion(t *testing.T) {
	e := start(t, func(c *config.Config) { c.TLS.DNSNames = []string{"istiod.istio-system.svc", "ca.example.internal"} })
	for _, name := range []string{"istiod.istio-system.svc", "ca.example.internal"} {
		conn, err := tls.Dial("tcp", e.b.Addr(), &tls.Config{RootCAs: e.roots, ServerName: name, NextProtos: []string{"h2"}})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		conn.Close()
	}
	_, err := tls.Dial("tcp", e.b.Addr(), &tls.Config{RootCAs: e.roots, ServerName: "istiod.istio-system.svc", MaxVersion: tls.VersionTLS11})
	if err == nil {
		t.Fatal("TLS 1.1 was accepted")
	}
}

func TestMetricsAndHealth(t *testing.T) {
	e := start(t, nil)
	key, _ := caclient.NewKey(true)
	ctx := context.Background()
	if _, err := e.client.CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: "spiffe://cluster.local/ns/a/sa/b", Token: e.token(t, "a", "b"), TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	_, err := e.client.CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: "spiffe://cluster.local/ns/a/sa/other", Token: e.token(t, "a", "b"), TTL: time.Hour})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("got %v", err)
	}
	get := func(path string) string {
		resp, err := http.Get("http://" + e.b.MetricsAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, b)
		}
		return string(b)
	}
	m := get("/metrics")
	for _, want := range []string{
		`meshca_certificate_requests_total{authn="jwks",code="OK"} 1`,
		`meshca_certificate_requests_total{authn="jwks",code="PermissionDenied"} 1`,
		`meshca_backend_sign_duration_seconds_count{result="ok"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	get("/healthz")
	get("/readyz")
}

// BenchmarkCreateCertificate is the whole issue path in one process:
// gRPC over TLS on loopback, JWT verification, policy, local CA signing,
// verification. Keys and CSRs are made beforehand: they are the
// workload's cost, not the broker's. "sequential" is one agent at a time
// (latency); "64-concurrent" is a mass restart, 64 agents asking at once
// (throughput, ns/op is the inverse).
func BenchmarkCreateCertificate(b *testing.B) {
	e := start(b, func(c *config.Config) { c.Log.Level = "error" })
	tok := e.token(b, "bench", "load")
	const n = 64
	csrs := make([]string, n)
	for i := range csrs {
		key, _ := caclient.NewKey(true)
		csrs[i], _ = caclient.CSR(key, "spiffe://cluster.local/ns/bench/sa/load")
	}
	ctx := context.Background()
	issue := func(b *testing.B, i int) {
		if _, err := e.client.CreateCertificate(ctx, caclient.Request{CSRPEM: csrs[i%n], Token: tok, TTL: time.Hour}); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("sequential", func(b *testing.B) {
		i := 0
		for b.Loop() {
			issue(b, i)
			i++
		}
	})
	// A restarting pod: its own token and key, and a fresh TLS connection
	// (handshake, HTTP/2 setup, one call, close). Client and server share
	// the process: profile with -cpuprofile and focus on the server.
	b.Run("fresh-connection", func(b *testing.B) {
		const m = 256
		toks, fresh := make([]string, m), make([]string, m)
		for i := range m {
			sa := fmt.Sprintf("load-%d", i)
			toks[i] = e.token(b, "bench", sa)
			key, _ := caclient.NewKey(true)
			fresh[i], _ = caclient.CSR(key, "spiffe://cluster.local/ns/bench/sa/"+sa)
		}
		i := 0
		for b.Loop() {
			c, err := caclient.Dial(e.b.Addr(), e.roots, "", nil)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.CreateCertificate(ctx, caclient.Request{CSRPEM: fresh[i%m], Token: toks[i%m], TTL: time.Hour}); err != nil {
				b.Fatal(err)
			}
			c.Close()
			i++
		}
	})
	b.Run("64-concurrent", func(b *testing.B) {
		b.SetParallelism(32) // 32 x GOMAXPROCS(2) goroutines
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				issue(b, i)
				i++
			}
		})
	})
}
