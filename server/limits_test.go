package server

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/broker/budget"
	"github.com/meshca/broker/issuance"
	authv1 "github.com/meshca/broker/proto/istio/v1/auth"
)

func withBudget(t *testing.T, f *fixture, cfg budget.Config, inFlight int) {
	t.Helper()
	b, err := budget.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.srv.cfg.Budget = b
	f.srv.cfg.Issuance = issuance.New(f.signer, issuance.Config{MaxInFlight: inFlight})
}

func TestIssuanceBudget(t *testing.T) {
	const token = "Bearer cart-token"
	tests := []struct {
		name string
		// csrs: the CSR of each request by index into distinct keys; a
		// repeated index is the agent's retry of the same request.
		csrs      []int
		burst     int
		wantCodes []codes.Code
		wantPKI   int32
	}{
		{"distinct CSRs within the burst are all signed", []int{0, 1, 2}, 3, []codes.Code{codes.OK, codes.OK, codes.OK}, 3},
		{"distinct CSRs beyond the burst are refused", []int{0, 1, 2}, 2, []codes.Code{codes.OK, codes.OK, codes.ResourceExhausted}, 2},
		{"retries of the same CSR cost nothing", []int{0, 0, 0, 0, 1}, 2, []codes.Code{codes.OK, codes.OK, codes.OK, codes.OK, codes.OK}, 2},
		{"a retry is served even with the budget spent", []int{0, 1, 0, 1, 2}, 2, []codes.Code{codes.OK, codes.OK, codes.OK, codes.OK, codes.ResourceExhausted}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			withBudget(t, f, budget.Config{Burst: tt.burst, Refill: time.Hour, MaxKeys: 100}, 10)
			var csrs []string
			for range 3 {
				csrs = append(csrs, csrFor(t, cart))
			}
			for i, c := range tt.csrs {
				_, err := f.srv.CreateCertificate(ctxWith("authorization", token),
					&authv1.IstioCertificateRequest{Csr: csrs[c], ValidityDuration: 3600})
				if got := status.Code(err); got != tt.wantCodes[i] {
					t.Fatalf("request %d: %v, want %s", i, err, tt.wantCodes[i])
				}
				if err != nil && !strings.Contains(err.Error(), "retry in 1h0m0s") {
					t.Fatalf("request %d: %v; want the limit and when to retry", i, err)
				}
			}
			if n := f.signer.calls.Load(); n != tt.wantPKI {
				t.Fatalf("%d PKI signings, want %d", n, tt.wantPKI)
			}
		})
	}
}

func TestInFlightBoundRefusesAtOnce(t *testing.T) {
	f := newFixture(t)
	withBudget(t, f, budget.Config{Burst: 100, Refill: time.Second, MaxKeys: 100}, 1)
	f.signer.delay = 500 * time.Millisecond
	// The first caller leaves; its signing goes on and holds the one slot.
	ctx, cancel := context.WithTimeout(ctxWith("authorization", "Bearer cart-token"), 20*time.Millisecond)
	defer cancel()
	if _, err := f.srv.CreateCertificate(ctx, &authv1.IstioCertificateRequest{Csr: csrFor(t, cart), ValidityDuration: 3600}); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("first: %v, want DeadlineExceeded", err)
	}
	start := time.Now()
	_, err := f.srv.CreateCertificate(ctxWith("authorization", "Bearer cart-token"), &authv1.IstioCertificateRequest{Csr: csrFor(t, cart), ValidityDuration: 3600})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "in flight") {
		t.Fatalf("second: %v, want ResourceExhausted naming the in-flight bound", err)
	}
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Fatalf("refusal took %s; it must not wait for a slot", d)
	}
}
