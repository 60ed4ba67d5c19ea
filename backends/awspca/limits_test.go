package awspca_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/acmpca"
	"github.com/aws/smithy-go"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/backends/backendtest"
	fakepca "github.com/meshca/broker/integration/fakes/awspca"
)

// TestHardQuotaIsRefusedNotRetried: LimitExceededException will not clear
// by retrying, so it is one call and a refusal (FailedPrecondition at the
// edge) with AWS's message, not throttling (ResourceExhausted, which the
// agent retries).
func TestHardQuotaIsRefusedNotRetried(t *testing.T) {
	f := startFake(t, fakepca.Options{})
	s := newSigner(t, f, nil)
	f.SetHardQuota(1)
	first, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	chain, err := sign(t, s, first, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}

	before := f.Calls("IssueCertificate")
	req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	_, err = sign(t, s, req, 5*time.Second)
	if !errors.Is(err, backends.ErrRefused) || errors.Is(err, backends.ErrThrottled) || backends.Retryable(err) {
		t.Fatalf("err = %v, want ErrRefused only", err)
	}
	for _, want := range []string{"LimitExceededException", "reached its quota of 1 issued certificates", "hard quota", "retrying will not help"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if n := f.Calls("IssueCertificate") - before; n != 1 {
		t.Errorf("%d IssueCertificate calls, want exactly 1", n)
	}
	if f.IssuedCount() != 1 {
		t.Errorf("%d certificates issued beyond the quota", f.IssuedCount()-1)
	}

	// An idempotent replay of the certificate already issued is no new
	// issuance and still answers.
	again, err := sign(t, s, first, 5*time.Second)
	if err != nil || !again[0].Equal(chain[0]) {
		t.Errorf("replay under the quota: %v", err)
	}
}

// TestThrottlingDrawsOnTheRetryBudget: throttling is still retried, but
// the retries draw on one budget per signer, so under sustained throttling
// the CA sees about one IssueCertificate per request, not up to six.
func TestThrottlingDrawsOnTheRetryBudget(t *testing.T) {
	const n = 40
	tests := []struct {
		name       string
		concurrent bool
	}{
		{"sequential", false},
		{"concurrent", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, fakepca.Options{})
			s := newSigner(t, f, nil)
			f.Throttle(1<<30, "IssueCertificate")

			// While the budget is full a throttled call is retried.
			req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
			if _, err := sign(t, s, req, 5*time.Second); !errors.Is(err, backends.ErrThrottled) {
				t.Fatalf("err = %v, want ErrThrottled", err)
			}
			if first := f.Calls("IssueCertificate"); first < 2 {
				t.Errorf("first request made %d IssueCertificate calls; want it retried", first)
			}

			start := time.Now()
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i := range n {
				one := func() {
					req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					_, errs[i] = s.Sign(ctx, req)
				}
				if tt.concurrent {
					wg.Go(one)
				} else {
					one()
				}
			}
			wg.Wait()
			elapsed := time.Since(start)
			for i, err := range errs {
				if !errors.Is(err, backends.ErrThrottled) || !strings.Contains(err.Error(), "Rate exceeded") {
					t.Fatalf("request %d: err = %v, want ErrThrottled with AWS's message", i, err)
				}
			}
			calls := f.Calls("IssueCertificate")
			t.Logf("%d requests under sustained throttling: %d IssueCertificate calls (%.2f per request) in %v", n+1, calls, float64(calls)/float64(n+1), elapsed.Round(time.Millisecond))
			if calls > n+1+10 {
				t.Errorf("%d IssueCertificate calls for %d requests; the retry budget should hold it near one per request", calls, n+1)
			}
			if elapsed > 3*time.Second {
				t.Errorf("%d throttled requests took %v; once the budget is spent they should be answered at once", n, elapsed)
			}

			// When the CA stops throttling, requests are served again.
			f.Throttle(0)
			req, _ = backendtest.NewRequest(t, spiffeID, time.Hour)
			chain, err := sign(t, s, req, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			backendtest.CheckIssued(t, s, req, chain)
		})
	}
}

// TestFakeRateLimit checks the fake's per-operation rate limit through
// the SDK: calls beyond the burst answer ThrottlingException "Rate
// exceeded", each operation has its own bucket, and 0 turns it off.
func TestFakeRateLimit(t *testing.T) {
	f := startFake(t, fakepca.Options{})
	client := rawClient(f)
	ctx := context.Background()
	describe := func() error {
		_, err := client.DescribeCertificateAuthority(ctx, &acmpca.DescribeCertificateAuthorityInput{CertificateAuthorityArn: aws.String(f.CAArn)})
		return err
	}
	caCert := func() error {
		_, err := client.GetCertificateAuthorityCertificate(ctx, &acmpca.GetCertificateAuthorityCertificateInput{CertificateAuthorityArn: aws.String(f.CAArn)})
		return err
	}

	// One token every 10 s: nothing refills during the test.
	f.SetRateLimit(0.1, 3)
	var ok, throttled int
	for range 8 {
		err := describe()
		var apiErr smithy.APIError
		switch {
		case err == nil:
			ok++
		case errors.As(err, &apiErr) && apiErr.ErrorCode() == "ThrottlingException" && apiErr.ErrorMessage() == "Rate exceeded":
			throttled++
		default:
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if ok != 3 || throttled != 5 {
		t.Errorf("%d answered, %d throttled; want the burst of 3 answered and 5 throttled", ok, throttled)
	}
	if got := f.Calls("DescribeCertificateAuthority"); got != 8 {
		t.Errorf("Calls = %d, want 8 (throttled calls count)", got)
	}
	if err := caCert(); err != nil {
		t.Errorf("another operation is limited by DescribeCertificateAuthority's bucket: %v", err)
	}

	// A rate that refills: after waiting for a token, a call passes.
	f.SetRateLimit(20, 1)
	if err := describe(); err != nil {
		t.Fatalf("first call after a new limit: %v", err)
	}
	if err := describe(); err == nil {
		t.Errorf("second immediate call passed a burst of 1")
	}
	time.Sleep(60 * time.Millisecond)
	if err := describe(); err != nil {
		t.Errorf("call after the refill: %v", err)
	}

	f.SetRateLimit(0, 0)
	for i := range 20 {
		if err := describe(); err != nil {
			t.Fatalf("call %d with the limit off: %v", i, err)
		}
	}
}

// TestIssueLatency: a CA slower than the caller's deadline. The first Sign
// gives up while the certificate is in progress (Unavailable, so the agent
// retries); the same request retried gets the certificate already issued,
// one issuance in all.
func TestIssueLatency(t *testing.T) {
	f := startFake(t, fakepca.Options{})
	s := newSigner(t, f, nil)
	const latency = 400 * time.Millisecond
	f.SetIssueLatency(latency)
	req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	start := time.Now()
	_, err := sign(t, s, req, 150*time.Millisecond)
	if !errors.Is(err, backends.ErrUnavailable) || !strings.Contains(err.Error(), "still being issued") {
		t.Fatalf("err = %v, want ErrUnavailable, still being issued", err)
	}
	if f.IssuedCount() != 1 {
		t.Fatalf("IssuedCount = %d, want 1", f.IssuedCount())
	}
	chain, err := sign(t, s, req, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < latency {
		t.Errorf("certificate fetched %v after issuance, before the %v latency", d, latency)
	}
	backendtest.CheckIssued(t, s, req, chain)
	if f.IssuedCount() != 1 || f.Calls("GetCertificate") < 3 {
		t.Errorf("IssuedCount = %d, GetCertificate calls %d; want 1 issuance and polls until it was ready", f.IssuedCount(), f.Calls("GetCertificate"))
	}

	f.SetIssueLatency(0)
	req, _ = backendtest.NewRequest(t, spiffeID, time.Hour)
	if _, err := sign(t, s, req, 5*time.Second); err != nil {
		t.Fatalf("latency off: %v", err)
	}
}
