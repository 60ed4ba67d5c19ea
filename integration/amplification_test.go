package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/broker/authn/kube"
	"github.com/meshca/broker/caclient"
	"github.com/meshca/broker/integration/testenv"
)

// tokenReviews is what the API server has counted of TokenReview calls
// (its apiserver_request_total for the tokenreviews resource).
func tokenReviews(t *testing.T, k *testenv.Kube) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, err := k.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		t.Fatalf("reading the API server's metrics: %v", err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(string(raw)))
	if err != nil {
		t.Fatalf("parsing the API server's metrics: %v", err)
	}
	n := 0
	if f := families["apiserver_request_total"]; f != nil {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "resource" && l.GetValue() == "tokenreviews" {
					n += int(m.GetCounter().GetValue())
				}
			}
		}
	}
	return n
}

// TestGarbageTokensCostBoundedTokenReviews: anyone who reaches the port
// can send tokens. Implausible ones (not a JWS, another issuer, another
// audience, expired) never reach the API server; plausible ones with
// made-up key IDs reach it at most at the per-cluster fallback rate, and
// the rest are told to retry (Unavailable). Counted by the API server.
func TestGarbageTokensCostBoundedTokenReviews(t *testing.T) {
	k := testenv.StartKube(t)
	k.CreateNamespace(t, "shop")
	sa := k.CreateServiceAccount(t, "shop", "cart")
	b := startBroker(t, k, nil)
	cl := dial(t, b, nil)
	forged := testenv.NewSigningKey(t) // a key the API server does not trust

	mint := func(i int, mod func(c *testenv.TokenClaims)) string {
		key := *forged
		key.KID = fmt.Sprintf("made-up-%d", i)
		c := testenv.TokenClaims{Issuer: k.Issuer, Namespace: "shop", ServiceAccount: "cart", ServiceAccountUID: string(sa.UID)}
		if mod != nil {
			mod(&c)
		}
		return key.Mint(t, c)
	}
	implausible := []string{
		"not-a-token",
		"a.b.c",
		mint(0, func(c *testenv.TokenClaims) { c.Issuer = "https://evil.example" }),
		mint(1, func(c *testenv.TokenClaims) { c.Audiences = []string{"vault"} }),
		mint(2, func(c *testenv.TokenClaims) {
			c.NotBefore, c.Expiry = time.Now().Add(-3*time.Hour), time.Now().Add(-2*time.Hour)
		}),
	}
	const plausibleCount, implausibleCount, workers = 2000, 1000, 16
	tokens := make([]string, 0, plausibleCount+implausibleCount)
	for i := range plausibleCount {
		tokens = append(tokens, mint(1000+i, nil))
	}
	for i := range implausibleCount {
		tokens = append(tokens, implausible[i%len(implausible)])
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	before := tokenReviews(t, k)
	var next, unauthenticated, unavailable atomic.Int64
	var other sync.Map
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key, _ := caclient.NewKey(true)
			for {
				i := int(next.Add(1)) - 1
				if i >= len(tokens) {
					return
				}
				_, err := cl.CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: cartID, Token: tokens[i], TTL: time.Hour})
				switch status.Code(err) {
				case codes.Unauthenticated:
					unauthenticated.Add(1)
				case codes.Unavailable:
					unavailable.Add(1)
				default:
					other.Store(status.Code(err).String(), err)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	reviews := tokenReviews(t, k) - before
	other.Range(func(code, err any) bool {
		t.Errorf("a garbage token was answered %s: %v", code, err)
		return true
	})
	bound := kube.DefaultUnknownKeyBurst + int(kube.DefaultUnknownKeyRate*elapsed.Seconds()) + 1
	t.Logf("%d garbage tokens (%d plausible with made-up key IDs, %d implausible) in %s: %d TokenReviews (bound %d), %d Unauthenticated, %d Unavailable",
		len(tokens), plausibleCount, implausibleCount, elapsed.Round(time.Millisecond), reviews, bound, unauthenticated.Load(), unavailable.Load())
	if reviews > bound {
		t.Fatalf("%d TokenReviews for garbage, want at most %d", reviews, bound)
	}
	if unauthenticated.Load() < implausibleCount {
		t.Fatalf("%d refused as Unauthenticated, want at least the %d implausible ones", unauthenticated.Load(), implausibleCount)
	}

	// The view stayed current through it, and says so.
	resp, err := http.Get("http://" + b.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`meshca_cluster_stale_seconds{cluster="Kubernetes"} 0`,
		`meshca_cluster_cached_objects_limit{cluster="Kubernetes"} 250000`,
	} {
		if !strings.Contains(string(body), want+"\n") {
			t.Errorf("broker metrics lack %q", want)
		}
	}

	// A real token still works right after the flood.
	tok, err := k.Token(ctx, "shop", "cart", []string{"istio-ca"}, time.Hour, "")
	if err != nil {
		t.Fatal(err)
	}
	key, _ := caclient.NewKey(true)
	if _, err := cl.CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: cartID, Token: tok, TTL: time.Hour}); err != nil {
		t.Fatalf("a real token after the flood: %v", err)
	}
}
