package loadgen

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshca/broker/caclient"
)

// workloads makes n workloads whose tokens tell the fake CA how to behave.
func workloads(t *testing.T, tokens ...string) []*Workload {
	t.Helper()
	ws := make([]*Workload, len(tokens))
	for i, tok := range tokens {
		ws[i] = &Workload{Namespace: fmt.Sprintf("ns-%d", i%3), ServiceAccount: fmt.Sprintf("sa-%d", i), Token: tok}
	}
	if err := PrepareKeys(context.Background(), ws, ECDSAP256, "cluster.local"); err != nil {
		t.Fatal(err)
	}
	return ws
}

func repeat(tok string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = tok
	}
	return out
}

var fastRetry = caclient.Retry{Max: 5, Initial: time.Millisecond}

func TestRunBurstFreshConnectionsVerifiesAndCountsFailures(t *testing.T) {
	f, target, conns := startFakeCA(t)
	tokens := append(repeat("ok", 20), "flaky", "flaky", "deny", "wrong-id")
	ws := workloads(t, tokens...)
	r, err := Run(context.Background(), target, ws, Options{Concurrency: 4, Retry: fastRetry, CAPID: 0, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if r.Succeeded != 22 {
		t.Errorf("succeeded %d, want 22 (20 ok + 2 retried)", r.Succeeded)
	}
	if r.Failed["PermissionDenied"] != 1 || r.Failed["VerifyFailed"] != 1 || r.FailedTotal() != 2 {
		t.Errorf("failures %v", r.Failed)
	}
	if !strings.Contains(r.Examples["VerifyFailed"], "want exactly") {
		t.Errorf("verify failure example %q", r.Examples["VerifyFailed"])
	}
	if r.Attempts != 24+2 {
		t.Errorf("attempts %d, want 26 (each flaky workload retried once; PermissionDenied not retried)", r.Attempts)
	}
	if got := conns(); got != len(ws) {
		t.Errorf("%d TLS connections for %d workloads, want one each", got, len(ws))
	}
	if f.clusters["Kubernetes"] != f.calls {
		t.Errorf("clusterid sent on %d of %d calls", f.clusters["Kubernetes"], f.calls)
	}
	if r.CertsPerSec <= 0 || r.P50 <= 0 || r.P50 > r.P99 || r.Connections != "fresh" || r.KeyType != ECDSAP256 || r.Mode != Burst {
		t.Errorf("report %+v", r)
	}
	if r.Self.PID == 0 || r.Self.Err != nil {
		t.Errorf("own CPU not measured: %+v", r.Self)
	}
	if r.CA.PID != 0 || r.APIServer.PID != 0 {
		t.Errorf("unnamed processes measured: %+v %+v", r.CA, r.APIServer)
	}
}

func TestRunSharedConnectionsAndNoRetry(t *testing.T) {
	_, target, conns := startFakeCA(t)
	ws := workloads(t, append(repeat("ok", 30), "flaky")...)
	r, err := Run(context.Background(), target, ws, Options{Concurrency: 8, SharedConnections: 2, NoRetry: true, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if r.Succeeded != 30 || r.Failed["Unavailable"] != 1 || r.Attempts != 31 {
		t.Errorf("succeeded %d failed %v attempts %d", r.Succeeded, r.Failed, r.Attempts)
	}
	if got := conns(); got != 2 || r.Connections != "shared/2" {
		t.Errorf("%d connections (%s), want 2 shared", got, r.Connections)
	}
}

func TestRunSteadyKeepsTheRate(t *testing.T) {
	_, target, _ := startFakeCA(t)
	ws := workloads(t, repeat("ok", 20)...)
	// 20 requests at 100/s take about 190ms however fast the CA is.
	r, err := Run(context.Background(), target, ws, Options{Mode: Steady, Rate: 100, Concurrency: 4, SharedConnections: 1, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if r.Succeeded != 20 {
		t.Fatalf("succeeded %d: %v", r.Succeeded, r.Examples)
	}
	if r.Duration < 180*time.Millisecond || r.Duration > 5*time.Second {
		t.Errorf("steady run of 20 at 100/s took %v", r.Duration)
	}
}

func TestRunTimeBoundLeavesTheRestNotStarted(t *testing.T) {
	_, target, _ := startFakeCA(t)
	ws := workloads(t, repeat("slow", 40)...)
	// One caller, 50ms per request, 120ms for the run: a few finish, the rest never start.
	r, err := Run(context.Background(), target, ws, Options{Concurrency: 1, SharedConnections: 1, Timeout: 120 * time.Millisecond, RequestTimeout: time.Second, NoRetry: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.Failed["NotStarted"] < 30 || r.Succeeded+r.FailedTotal() != 40 {
		t.Errorf("succeeded %d failed %v", r.Succeeded, r.Failed)
	}
	if r.Duration > 2*time.Second {
		t.Errorf("bounded run took %v", r.Duration)
	}
}

func TestRunRefusesWorkloadsWithoutKeysAndBadOptions(t *testing.T) {
	_, target, _ := startFakeCA(t)
	if _, err := Run(context.Background(), target, []*Workload{{Namespace: "a", ServiceAccount: "b"}}, Options{}); err == nil {
		t.Error("workloads without keys accepted")
	}
	ws := workloads(t, "ok")
	if _, err := Run(context.Background(), target, ws, Options{Mode: Steady}); err == nil {
		t.Error("steady mode without a rate accepted")
	}
	bad := target
	bad.RootsPEM = []byte("nothing")
	if _, err := Run(context.Background(), bad, ws, Options{}); err == nil {
		t.Error("roots without certificates accepted")
	}
}

func TestPrepareKeysRSAAndFreshness(t *testing.T) {
	ws := []*Workload{{Namespace: "a", ServiceAccount: "b"}}
	if err := PrepareKeys(context.Background(), ws, RSA2048, "example.org"); err != nil {
		t.Fatal(err)
	}
	first := ws[0].CSRPEM
	if keyTypeOf(ws[0]) != RSA2048 || !strings.Contains(first, "CERTIFICATE REQUEST") {
		t.Fatalf("key %T csr %q", ws[0].Key, first)
	}
	if err := PrepareKeys(context.Background(), ws, ECDSAP256, "example.org"); err != nil {
		t.Fatal(err)
	}
	if ws[0].CSRPEM == first || keyTypeOf(ws[0]) != ECDSAP256 {
		t.Error("PrepareKeys did not give a fresh key and CSR")
	}
	if ws[0].SPIFFEID("example.org") != "spiffe://example.org/ns/a/sa/b" {
		t.Error(ws[0].SPIFFEID("example.org"))
	}
	if _, err := ParseKeyType("dsa"); err == nil {
		t.Error("unknown key type accepted")
	}
}
