package integration

import (
	"context"
	"crypto"
	"crypto/x509/pkix"
	"encoding/asn1"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/broker/caclient"
	"github.com/meshca/broker/config"
	fakepca "github.com/meshca/broker/integration/fakes/awspca"
	fakecas "github.com/meshca/broker/integration/fakes/gcpcas"
)

// countingPKI is a fake PKI as these tests see it: how many certificates
// it issued and how many issuing calls it received.
type countingPKI struct {
	name    string
	backend config.Backend
	slow    func(time.Duration)
	issued  func() int
	calls   func() int
	limit   func(perSecond float64, burst int)
	inject  func(raw []byte)
}

func fakePKIs(t *testing.T) []func(t *testing.T) countingPKI {
	return []func(t *testing.T) countingPKI{
		func(t *testing.T) countingPKI {
			f, backend := startAWSFake(t, fakepca.Options{StrictEmptySubject: true})
			return countingPKI{"awspca", backend, f.SetIssueLatency, f.IssuedCount,
				func() int { return f.Calls("IssueCertificate") }, f.SetRateLimit, f.SetInjectSubject}
		},
		func(t *testing.T) countingPKI {
			f, backend := startCASFake(t, fakecas.Options{})
			return countingPKI{"gcpcas", backend, f.SetLatency, f.IssuedCount,
				func() int { return f.Calls("CreateCertificate") }, f.SetRateLimit, f.SetInjectSubject}
		},
	}
}

// TestSlowPKIIssuesOnceAcrossAgentRetries: the PKI takes longer than the
// broker's sign timeout; the agent retries the same CSR on Unavailable, as
// it does. The PKI issues exactly one certificate, and the retried call
// receives it.
func TestSlowPKIIssuesOnceAcrossAgentRetries(t *testing.T) {
	for _, start := range fakePKIs(t) {
		pki := start(t)
		t.Run(pki.name, func(t *testing.T) {
			_, cl, tok := jwksBroker(t, pki.backend, func(c *config.Config) {
				c.SignTimeout = config.Duration{Duration: time.Second}
			})
			pki.slow(2500 * time.Millisecond)
			key, _ := caclient.NewKey(true)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			before, callsBefore := pki.issued(), pki.calls()
			got, attempts, err := cl.CreateCertificateRetrying(ctx, caclient.Request{Key: key, SPIFFEID: cartID, Token: tok, TTL: time.Hour}, caclient.AgentRetry)
			if err != nil {
				t.Fatalf("after %d attempts: %v", attempts, err)
			}
			issued, calls := pki.issued()-before, pki.calls()-callsBefore
			t.Logf("%s: served after %d attempts; the PKI issued %d certificate(s) and received %d issuing call(s)", pki.name, attempts, issued, calls)
			if attempts < 2 {
				t.Fatalf("served at the first attempt: the PKI was not slower than the sign timeout")
			}
			if issued != 1 || calls != 1 {
				t.Fatalf("the PKI issued %d certificates for %d calls, want exactly 1 and 1", issued, calls)
			}
			if !got.Chain[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
				t.Fatal("the certificate is not for the agent's key")
			}
		})
	}
}

// TestSustainedThrottlingCostsAboutOnePKICallPerRequest: 200 agents start
// at once against a PKI that admits 40 issuing calls a second. The broker
// does not multiply the load: once its retry budget is spent, each request
// it receives costs the PKI about one call and is answered with
// ResourceExhausted at once; the agents' own retries then get every
// workload served.
func TestSustainedThrottlingCostsAboutOnePKICallPerRequest(t *testing.T) {
	const agents = 200
	for _, start := range fakePKIs(t) {
		pki := start(t)
		t.Run(pki.name, func(t *testing.T) {
			_, cl, tok := jwksBroker(t, pki.backend, nil)
			pki.limit(40, 10)
			callsBefore := pki.calls()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			var (
				wg                 sync.WaitGroup
				mu                 sync.Mutex
				requests, served   int
				exhausted, unavail int
			)
			begin := time.Now()
			for range agents {
				wg.Add(1)
				go func() {
					defer wg.Done()
					key, _ := caclient.NewKey(true)
					csr, _ := caclient.CSR(key, cartID)
					// The agent's schedule, and again after it is spent
					// (Envoy asks the agent again), until served.
					for ctx.Err() == nil {
						_, n, err := cl.CreateCertificateRetrying(ctx, caclient.Request{CSRPEM: csr, Token: tok, TTL: time.Hour}, caclient.AgentRetry)
						mu.Lock()
						requests += n
						switch {
						case err == nil:
							served++
						case status.Code(err) == codes.ResourceExhausted:
							exhausted++
						case status.Code(err) == codes.Unavailable:
							unavail++
						}
						mu.Unlock()
						if err == nil {
							return
						}
						if c := status.Code(err); c != codes.ResourceExhausted && c != codes.Unavailable {
							t.Errorf("an agent got %v", err)
							return
						}
					}
				}()
			}
			wg.Wait()
			calls := pki.calls() - callsBefore
			perRequest := float64(calls) / float64(requests)
			t.Logf("%s: %d agents served in %s; %d CreateCertificate calls reached the broker; the PKI received %d issuing calls: %.2f per broker request, %.2f per workload (%d schedules ended ResourceExhausted, %d Unavailable)",
				pki.name, served, time.Since(begin).Round(time.Millisecond), requests, calls, perRequest, float64(calls)/agents, exhausted, unavail)
			if served != agents {
				t.Fatalf("%d of %d agents served", served, agents)
			}
			if perRequest > 1.2 {
				t.Fatalf("%.2f PKI calls per broker request under sustained throttling, want close to 1", perRequest)
			}
		})
	}
}

// TestPKIInjectingASubjectIsCaught: a PKI that puts a subject into the
// certificate whatever it is asked gets no certificate to a workload: the
// broker's verification refuses it with Internal.
func TestPKIInjectingASubjectIsCaught(t *testing.T) {
	admin, err := asn1.Marshal(pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}}.ToRDNSequence())
	if err != nil {
		t.Fatal(err)
	}
	for _, start := range fakePKIs(t) {
		pki := start(t)
		t.Run(pki.name, func(t *testing.T) {
			_, cl, tok := jwksBroker(t, pki.backend, nil)
			pki.inject(admin)
			key, _ := caclient.NewKey(true)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			got, err := cl.CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: cartID, Token: tok, TTL: time.Hour})
			if status.Code(err) != codes.Internal || got != nil {
				t.Fatalf("got %v, %v; want Internal and no certificate", got, err)
			}
			if pki.issued() == 0 {
				t.Fatal("the PKI issued nothing: the test did not exercise verification")
			}
		})
	}
}
