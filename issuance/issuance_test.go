package issuance

import (
	"context"
	"crypto/x509"
	"errors"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/backends/backendtest"
)

// slowSigner signs after delay, counting calls; it returns a distinct
// fake leaf per call so tests can tell issuances apart.
type slowSigner struct {
	delay time.Duration
	calls atomic.Int32
	fail  atomic.Bool
}

func (s *slowSigner) Sign(ctx context.Context, req *backends.Request) ([]*x509.Certificate, error) {
	n := s.calls.Add(1)
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if s.fail.Load() {
		return nil, errors.New("pki: " + backends.ErrUnavailable.Error())
	}
	return []*x509.Certificate{{SerialNumber: nil, Raw: []byte{byte(n)}, NotBefore: req.Template.NotBefore}}, nil
}

func (s *slowSigner) TrustAnchors(context.Context) ([]*x509.Certificate, error) { return nil, nil }

const workload = "spiffe://cluster.local/ns/shop/sa/cart"

// retryOf is the same request approved again a little later: same CSR,
// same lifetime, later NotBefore and NotAfter.
func retryOf(req *backends.Request, later time.Duration) *backends.Request {
	t := *req.Template
	t.NotBefore, t.NotAfter = t.NotBefore.Add(later), t.NotAfter.Add(later)
	return &backends.Request{CSR: req.CSR, Template: &t}
}

func TestRetryJoinsTheSigningStillUnderWay(t *testing.T) {
	signer := &slowSigner{delay: 300 * time.Millisecond}
	c := New(signer, Config{})
	first, _ := backendtest.NewRequest(t, workload, time.Hour)

	// The first attempt gives up before the PKI answers, as the agent's
	// request does when the PKI is slower than the sign timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, _, outcome, err := c.Sign(ctx, first, nil)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || outcome != Issued {
		t.Fatalf("first attempt: outcome %s, err %v; want issued and a deadline error", outcome, err)
	}
	// The retry joins it and gets its certificate, for the first template.
	retry := retryOf(first, 2*time.Second)
	got, chain, outcome, err := c.Sign(context.Background(), retry, nil)
	if err != nil || outcome != Joined {
		t.Fatalf("retry: outcome %s, err %v; want joined", outcome, err)
	}
	if got != first || chain[0].Raw[0] != 1 {
		t.Fatalf("retry got request %p chain %v; want the first request's and certificate 1", got, chain[0].Raw)
	}
	// A later retry is served from the finished signing.
	_, chain, outcome, err = c.Sign(context.Background(), retryOf(first, 3*time.Second), nil)
	if err != nil || outcome != Reused || chain[0].Raw[0] != 1 {
		t.Fatalf("second retry: outcome %s, err %v", outcome, err)
	}
	if n := signer.calls.Load(); n != 1 {
		t.Fatalf("the PKI was asked %d times, want 1", n)
	}
}

func TestConcurrentIdenticalRequestsShareOneSigning(t *testing.T) {
	signer := &slowSigner{delay: 100 * time.Millisecond}
	c := New(signer, Config{})
	req, _ := backendtest.NewRequest(t, workload, time.Hour)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, _, err := c.Sign(context.Background(), retryOf(req, time.Duration(i)*time.Millisecond), nil); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := signer.calls.Load(); n != 1 {
		t.Fatalf("the PKI was asked %d times, want 1", n)
	}
}

func TestDifferentRequestsAreSignedApart(t *testing.T) {
	req, _ := backendtest.NewRequest(t, workload, time.Hour)
	otherID := func() *backends.Request {
		r := retryOf(req, 0)
		r.Template.URIs = []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/shop/sa/admin"}}
		return r
	}
	otherCSR, _ := backendtest.NewRequest(t, workload, time.Hour)
	otherLifetime := func() *backends.Request {
		r := retryOf(req, 0)
		r.Template.NotAfter = r.Template.NotAfter.Add(time.Hour)
		return r
	}
	cases := []struct {
		name  string
		other *backends.Request
	}{
		{"another identity with the same CSR", otherID()},
		{"another CSR (key) for the same identity", otherCSR},
		{"another lifetime", otherLifetime()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			signer := &slowSigner{}
			c := New(signer, Config{})
			_, a, _, err := c.Sign(context.Background(), req, nil)
			if err != nil {
				t.Fatal(err)
			}
			got, b, outcome, err := c.Sign(context.Background(), tc.other, nil)
			if err != nil {
				t.Fatal(err)
			}
			if outcome != Issued || got != tc.other || a[0].Raw[0] == b[0].Raw[0] || signer.calls.Load() != 2 {
				t.Fatalf("outcome %s, calls %d: a different request shared a certificate", outcome, signer.calls.Load())
			}
		})
	}
}

func TestFailuresAreNotRemembered(t *testing.T) {
	signer := &slowSigner{}
	signer.fail.Store(true)
	c := New(signer, Config{})
	req, _ := backendtest.NewRequest(t, workload, time.Hour)
	if _, _, _, err := c.Sign(context.Background(), req, nil); err == nil {
		t.Fatal("want the PKI's failure")
	}
	signer.fail.Store(false)
	_, _, outcome, err := c.Sign(context.Background(), retryOf(req, time.Second), nil)
	if err != nil || outcome != Issued || signer.calls.Load() != 2 {
		t.Fatalf("retry after a failure: outcome %s err %v calls %d; want a new signing", outcome, err, signer.calls.Load())
	}
}

func TestWindowAndSizeBound(t *testing.T) {
	signer := &slowSigner{}
	c := New(signer, Config{Window: time.Minute, MaxEntries: 3})
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	c.now = func() time.Time { return time.Unix(0, clock.Load()) }
	req, _ := backendtest.NewRequest(t, workload, time.Hour)
	if _, _, _, err := c.Sign(context.Background(), req, nil); err != nil {
		t.Fatal(err)
	}
	clock.Add(int64(2 * time.Minute))
	if _, _, outcome, _ := c.Sign(context.Background(), retryOf(req, 2*time.Minute), nil); outcome != Issued {
		t.Fatalf("after the window: outcome %s, want a new signing", outcome)
	}
	for range 10 {
		other, _ := backendtest.NewRequest(t, workload, time.Hour)
		if _, _, _, err := c.Sign(context.Background(), other, nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := c.Len(); n > 3 {
		t.Fatalf("%d entries kept, bound is 3", n)
	}
}

func TestOnlyNewSigningsAreAdmitted(t *testing.T) {
	signer := &slowSigner{delay: 200 * time.Millisecond}
	c := New(signer, Config{})
	var admitted atomic.Int32
	admit := func() error { admitted.Add(1); return nil }
	first, _ := backendtest.NewRequest(t, workload, time.Hour)

	// The first attempt leaves before the PKI answers; its retries join
	// the signing under way, then reuse its certificate: one charge.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, _, outcome, _ := c.Sign(ctx, first, admit); outcome != Issued {
		t.Fatalf("first: outcome %s", outcome)
	}
	for i, want := range []Outcome{Joined, Reused, Reused} {
		_, _, outcome, err := c.Sign(context.Background(), retryOf(first, time.Duration(i+1)*time.Second), admit)
		if err != nil || outcome != want {
			t.Fatalf("retry %d: outcome %s err %v, want %s", i, outcome, err, want)
		}
	}
	other, _ := backendtest.NewRequest(t, workload, time.Hour)
	if _, _, _, err := c.Sign(context.Background(), other, admit); err != nil {
		t.Fatal(err)
	}
	if n := admitted.Load(); n != 2 {
		t.Fatalf("admitted %d times for two distinct CSRs and three retries, want 2", n)
	}
}

func TestRefusedAdmissionStartsNothing(t *testing.T) {
	signer := &slowSigner{}
	c := New(signer, Config{MaxInFlight: 1})
	refusal := errors.New("budget exhausted")
	req, _ := backendtest.NewRequest(t, workload, time.Hour)
	if _, _, _, err := c.Sign(context.Background(), req, func() error { return refusal }); !errors.Is(err, refusal) {
		t.Fatalf("got %v, want the admission's refusal", err)
	}
	if signer.calls.Load() != 0 || c.InFlight() != 0 || c.Len() != 0 {
		t.Fatalf("after a refused admission: %d PKI calls, %d in flight, %d entries; want none", signer.calls.Load(), c.InFlight(), c.Len())
	}
	// The slot is free again and the refusal is not remembered.
	if _, _, outcome, err := c.Sign(context.Background(), retryOf(req, time.Second), nil); err != nil || outcome != Issued {
		t.Fatalf("after the refusal: outcome %s err %v", outcome, err)
	}
}

func TestInFlightBoundCountsSigningsWhoseCallerLeft(t *testing.T) {
	signer := &slowSigner{delay: 300 * time.Millisecond}
	c := New(signer, Config{MaxInFlight: 2})
	// Two callers leave at once; their signings go on and hold both slots.
	for range 2 {
		req, _ := backendtest.NewRequest(t, workload, time.Hour)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		if _, _, _, err := c.Sign(ctx, req, nil); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want the caller's deadline", err)
		}
		cancel()
	}
	if n := c.InFlight(); n != 2 {
		t.Fatalf("%d in flight, want 2", n)
	}
	third, _ := backendtest.NewRequest(t, workload, time.Hour)
	start := time.Now()
	_, _, _, err := c.Sign(context.Background(), third, func() error { t.Error("admitted beyond the in-flight bound"); return nil })
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("third signing: got %v, want ErrBusy", err)
	}
	if d := time.Since(start); d > 50*time.Millisecond {
		t.Fatalf("refusal took %s; it must not wait", d)
	}
	// Once they finish, new signings go ahead.
	deadline := time.Now().Add(2 * time.Second)
	for c.InFlight() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if _, _, outcome, err := c.Sign(context.Background(), retryOf(third, time.Second), nil); err != nil || outcome != Issued {
		t.Fatalf("after the signings finished: outcome %s err %v", outcome, err)
	}
}

// TestBackendRateRefusesNewSigningsAtOnce: beyond the backend's rate a new
// signing is refused as the PKI's throttling would be (ResourceExhausted
// at the edge) without calling it, while retries of what was issued are
// still served from the cache.
func TestBackendRateRefusesNewSigningsAtOnce(t *testing.T) {
	signer := &slowSigner{}
	c := New(signer, Config{Rate: 0.001, Burst: 2})
	var issued []*backends.Request
	for range 2 {
		req, _ := backendtest.NewRequest(t, workload, time.Hour)
		if _, _, outcome, err := c.Sign(context.Background(), req, nil); err != nil || outcome != Issued {
			t.Fatalf("within the burst: outcome %s err %v", outcome, err)
		}
		issued = append(issued, req)
	}
	third, _ := backendtest.NewRequest(t, workload, time.Hour)
	_, _, _, err := c.Sign(context.Background(), third, func() error { t.Error("admitted beyond the backend's rate"); return nil })
	if !errors.Is(err, backends.ErrThrottled) || signer.calls.Load() != 2 {
		t.Fatalf("beyond the rate: %v after %d PKI calls; want ErrThrottled and 2 calls", err, signer.calls.Load())
	}
	if c.InFlight() != 0 || c.Len() != 2 {
		t.Fatalf("the refusal left %d in flight and %d entries", c.InFlight(), c.Len())
	}
	for i, req := range issued {
		if _, _, outcome, err := c.Sign(context.Background(), retryOf(req, time.Second), nil); err != nil || outcome != Reused {
			t.Fatalf("retry %d with the rate spent: outcome %s err %v, want Reused", i, outcome, err)
		}
	}
}
