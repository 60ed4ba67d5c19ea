package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshca/broker/integration/testenv"
	"github.com/meshca/broker/loadgen"
)

// TestLoadBenchVsIstioCA is the side-by-side benchmark of issue 7: N
// distinct workloads (a ServiceAccount, a Pending pod and a real pod-bound
// TokenRequest token each) in a real kube-apiserver, one certificate each
// in a burst with a fresh TLS connection per workload, against the broker
// binary (local verification, TokenReview verification, and JWKS mode) and
// against Istio's own CA server code (scripts/tools/istio-ca) on the same
// identities and the same API server, alternating targets. Istio's CA runs
// with istiod's kube client limits (QPS 80, burst 160: in a burst it issues
// at most ~80 certificates/s whatever the CPU) and, as istio-ca-qps1000,
// with the broker's (1000/2000), to compare the servers' own costs. It
// prints the runs and, per concurrency, a table with ratios to Istio's CA.
//
// It runs only with MESHCA_LOADBENCH=1 (scripts/bench-vs-istio.sh sets it
// and the defaults below); it is a measurement, not a pass/fail test, and
// fails only when a request gets no verified certificate. Knobs:
//
//	MESHCA_LOADBENCH_N            workloads (5000)
//	MESHCA_LOADBENCH_CONCURRENCY  comma-separated concurrencies (16,64)
//	MESHCA_LOADBENCH_RUNS         runs per target and concurrency (1); the order rotates
//	MESHCA_LOADBENCH_TARGETS      comma-separated, from broker-local, broker-tokenreview, broker-jwks,
//	                              istio-ca (istiod's kube client limits, QPS/burst 80/160) and
//	                              istio-ca-qps<N> (QPS N, burst 2N) (default: all five, N=1000);
//	                              a broker target may name another build (broker-local@/path/to/broker)
//	                              and environment (broker-local+GOGC=100), to compare in one run
//	MESHCA_LOADBENCH_KEY          workload keys: ECDSA-P256 (default) or RSA-2048
//	MESHCA_LOADBENCH_SHARED       shared TLS connections instead of one per workload (0)
//	MESHCA_LOADBENCH_NAMESPACES   namespaces the workloads are spread over (10)
//	MESHCA_LOADBENCH_PAUSE        pause between runs (11s: kube-apiserver caches a TokenReview for 10s)
//	MESHCA_LOADBENCH_BROKER_CA_KEY  the broker's local CA key (ECDSA-P256, its default; Istio's is RSA-2048)
//	MESHCA_LOADBENCH_PERF_DIR     if set: a perf record of each broker run there (if perf is installed),
//	                              and a Go CPU profile of the load generator
//	MESHCA_LOADBENCH_OUT          also write the tables to this file
func TestLoadBenchVsIstioCA(t *testing.T) {
	if os.Getenv("MESHCA_LOADBENCH") != "1" {
		t.Skip("load benchmark: set MESHCA_LOADBENCH=1 (scripts/bench-vs-istio.sh does)")
	}
	if os.Getenv("MESHCA_INTEGRATION") == "" {
		t.Setenv("MESHCA_INTEGRATION", "1") // the benchmark was asked for: missing tools are fatal
	}
	n := envInt(t, "MESHCA_LOADBENCH_N", 5000)
	var concurrencies []int
	for _, s := range strings.Split(envStr("MESHCA_LOADBENCH_CONCURRENCY", "16,64"), ",") {
		c, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || c <= 0 {
			t.Fatalf("MESHCA_LOADBENCH_CONCURRENCY: %q", s)
		}
		concurrencies = append(concurrencies, c)
	}
	runs := envInt(t, "MESHCA_LOADBENCH_RUNS", 1)
	shared := envInt(t, "MESHCA_LOADBENCH_SHARED", 0)
	namespaces := envInt(t, "MESHCA_LOADBENCH_NAMESPACES", 10)
	pause, err := time.ParseDuration(envStr("MESHCA_LOADBENCH_PAUSE", "11s"))
	if err != nil {
		t.Fatal(err)
	}
	kt, err := loadgen.ParseKeyType(envStr("MESHCA_LOADBENCH_KEY", "ECDSA-P256"))
	if err != nil {
		t.Fatal(err)
	}
	targets := strings.Split(envStr("MESHCA_LOADBENCH_TARGETS", "broker-local,broker-tokenreview,istio-ca,istio-ca-qps1000,broker-jwks"), ",")
	perfDir := os.Getenv("MESHCA_LOADBENCH_PERF_DIR")
	out := io.Writer(os.Stdout)
	if p := os.Getenv("MESHCA_LOADBENCH_OUT"); p != "" {
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		out = io.MultiWriter(os.Stdout, f)
	}

	kube := testenv.StartKube(t)
	istioBin := testenv.Tool(t, "istio-ca")
	brokerBin := buildBroker(t)

	type target struct {
		loadgen.Target
		pid int
	}
	byName := map[string]*target{}
	for _, name := range targets {
		name = strings.TrimSpace(name)
		var tg loadgen.Target
		var pid int
		// "broker-local+GOGC=100" runs the broker with GOGC=100 in its
		// environment, "broker-local@/tmp/broker-old" runs another build
		// of it: settings and versions compared side by side in one run.
		base, env, _ := strings.Cut(name, "+")
		base, otherBin, _ := strings.Cut(base, "@")
		bin := brokerBin
		if otherBin != "" {
			bin = otherBin
		}
		switch base {
		case "broker-local", "broker-tokenreview", "broker-jwks":
			tg, pid = startBrokerBinary(t, bin, kube, strings.TrimPrefix(base, "broker-"), strings.FieldsFunc(env, func(r rune) bool { return r == '+' }))
		case "istio-ca":
			tg, pid = startIstioCA(t, istioBin, kube, 80) // istiod's kube client QPS/burst: 80/160
		default:
			if qps, err := strconv.Atoi(strings.TrimPrefix(name, "istio-ca-qps")); err == nil && strings.HasPrefix(name, "istio-ca-qps") && qps > 0 {
				tg, pid = startIstioCA(t, istioBin, kube, qps)
				break
			}
			t.Fatalf("MESHCA_LOADBENCH_TARGETS: unknown target %q", name)
		}
		tg.Name = name
		byName[name] = &target{tg, pid}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	set, err := loadgen.Setup(ctx, kube.Client, loadgen.SetupOptions{N: n, Namespaces: namespaces, BoundPods: true, Concurrency: 32})
	if err != nil {
		t.Fatalf("creating %d workloads: %v", n, err)
	}
	conns := "a fresh TLS connection per workload"
	if shared > 0 {
		conns = fmt.Sprintf("%d shared TLS connections", shared)
	}
	header := fmt.Sprintf("%d workloads (pod-bound TokenRequest tokens, %d namespaces) created in %.1fs; burst, %s, %s workload keys, broker CA key %s (Istio's: RSA-2048), %d run(s) per target; host: %d CPUs shared by the load generator, the CAs and the API server (other work on the machine may interfere)",
		n, len(set.Namespaces), set.Took.Seconds(), conns, kt, envStr("MESHCA_LOADBENCH_BROKER_CA_KEY", "ECDSA-P256"), runs, runtime.NumCPU())
	fmt.Fprintln(out, header)

	failed := 0
	var tables strings.Builder
	for _, c := range concurrencies {
		reports := map[string][]*loadgen.Report{}
		for rep := 0; rep < runs; rep++ {
			for i := range targets {
				name := strings.TrimSpace(targets[(i+rep)%len(targets)]) // rotate the order
				tg := byName[name]
				time.Sleep(pause) // the previous run's TokenReviews leave kube-apiserver's cache
				if err := loadgen.PrepareKeys(ctx, set.Workloads, kt, "cluster.local"); err != nil {
					t.Fatal(err)
				}
				stopPerf := startPerf(t, perfDir, tg.pid, fmt.Sprintf("%s-c%d-run%d", name, c, rep+1), strings.HasPrefix(name, "broker"))
				stopProfile := profileLoadGenerator(t, perfDir, fmt.Sprintf("loadgen-%s-c%d-run%d", name, c, rep+1))
				r, err := loadgen.Run(ctx, tg.Target, set.Workloads, loadgen.Options{
					Mode: loadgen.Burst, Concurrency: c, SharedConnections: shared,
					Timeout: 10 * time.Minute, CAPID: tg.pid, APIServerPID: kube.PID(),
				})
				stopPerf()
				stopProfile()
				if err != nil {
					t.Fatal(err)
				}
				r.Write(out)
				failed += r.FailedTotal()
				reports[name] = append(reports[name], r)
			}
		}
		var cols []loadgen.Column
		var refs []int
		for _, name := range targets {
			name = strings.TrimSpace(name)
			if strings.HasPrefix(name, "istio-ca") {
				refs = append(refs, len(cols))
			}
			cols = append(cols, loadgen.Column{Name: name, Reports: reports[name]})
		}
		loadgen.WriteTable(&tables, fmt.Sprintf("\nconcurrency %d (medians over runs; then ratios to Istio's CA)", c), cols, refs...)
	}
	fmt.Fprintln(out, "\n"+header)
	fmt.Fprint(out, tables.String())
	if failed > 0 {
		t.Errorf("%d requests got no verified certificate (see the reports above)", failed)
	}
}

func envStr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func envInt(t *testing.T, key string, def int) int {
	t.Helper()
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q: want a number", key, v)
	}
	return n
}

// buildBroker builds ./cmd/broker (with symbols, for perf) into a temp dir.
func buildBroker(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "broker")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/broker")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/broker: %v\n%s", err, out)
	}
	return bin
}

// startBrokerBinary runs `broker serve` on 127.0.0.1 with the local CA
// backend, authenticating tokens of kube with verification "local" or
// "tokenreview", or (mode "jwks") against the cluster's JWKS in a file
// with no Kubernetes client at all.
func startBrokerBinary(t *testing.T, bin string, kube *testenv.Kube, mode string, env []string) (loadgen.Target, int) {
	t.Helper()
	dir := t.TempDir()
	authn := fmt.Sprintf("authn:\n  kubernetes:\n    kubeconfig: %s\n    verification: %s\n", kube.Kubeconfig, mode)
	if mode == "jwks" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		jwks, err := kube.JWKS(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		jwksFile := filepath.Join(dir, "jwks.json")
		if err := os.WriteFile(jwksFile, jwks, 0o600); err != nil {
			t.Fatal(err)
		}
		// The cluster's own pod-bound tokens, with no cluster check at
		// all: the documented opt-in, for measuring verification alone.
		authn = fmt.Sprintf("authn:\n  kubernetes:\n    enabled: false\n  jwks:\n    - issuer: %s\n      file: %s\n      clusterID: Kubernetes\n      allowKubernetesBoundTokens: true\n", kube.Issuer, jwksFile)
	}
	caKey := envStr("MESHCA_LOADBENCH_BROKER_CA_KEY", "ECDSA-P256")
	for attempt := 0; ; attempt++ {
		port, mport := testenv.FreePort(t), testenv.FreePort(t)
		cfg := fmt.Sprintf("listen: 127.0.0.1:%d\nmetricsListen: 127.0.0.1:%d\ndataDir: %s\ntrustDomain: cluster.local\nclusterID: Kubernetes\n%sbackend:\n  type: local\n  local:\n    keyAlgorithm: %s\nlog:\n  level: info\n  format: json\n",
			port, mport, dir, authn, caKey)
		cfgFile := filepath.Join(dir, "config.yaml")
		if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		p := testenv.StartProcess(t, fmt.Sprintf("broker-%s-%d", mode, attempt), bin, []string{"serve", "--config", cfgFile}, env, dir)
		err := waitFor(p, 2*time.Minute, func() error {
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", mport))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b, _ := io.ReadAll(resp.Body)
				return fmt.Errorf("readyz %d: %s", resp.StatusCode, b)
			}
			return nil
		})
		if err != nil {
			p.Stop()
			if attempt < 2 && strings.Contains(strings.ToLower(p.Log()), "address already in use") {
				continue
			}
			t.Fatalf("broker (%s): %v\n%s", mode, err, p.Log())
		}
		roots, err := os.ReadFile(filepath.Join(dir, "localca", "root-cert.pem"))
		if err != nil {
			t.Fatalf("broker root: %v", err)
		}
		return loadgen.Target{Addr: fmt.Sprintf("127.0.0.1:%d", port), RootsPEM: roots, ClusterID: "Kubernetes", TrustDomain: "cluster.local"}, p.PID()
	}
}

var istioListening = regexp.MustCompile(`istio-ca listening on (\S+)`)

// startIstioCA runs Istio's CA server code against kube's API server, its
// kube client limited to qps (burst twice that, as istiod's 80/160).
func startIstioCA(t *testing.T, bin string, kube *testenv.Kube, qps int) (loadgen.Target, int) {
	t.Helper()
	dir := t.TempDir()
	rootFile := filepath.Join(dir, "root-cert.pem")
	p := testenv.StartProcess(t, fmt.Sprintf("istio-ca-qps%d", qps), bin, []string{"--kubeconfig", kube.Kubeconfig, "--listen", "127.0.0.1:0", "--root-cert-file", rootFile,
		"--kube-qps", strconv.Itoa(qps), "--kube-burst", strconv.Itoa(2 * qps)}, nil, dir)
	var addr string
	if err := waitFor(p, time.Minute, func() error {
		m := istioListening.FindStringSubmatch(p.Log())
		if m == nil {
			return fmt.Errorf("not listening yet")
		}
		addr = m[1]
		return nil
	}); err != nil {
		t.Fatalf("istio-ca: %v\n%s", err, p.Log())
	}
	roots, err := os.ReadFile(rootFile)
	if err != nil {
		t.Fatal(err)
	}
	return loadgen.Target{Addr: addr, RootsPEM: roots, ClusterID: "Kubernetes", TrustDomain: "cluster.local"}, p.PID()
}

// waitFor polls check until it succeeds, the process exits or timeout passes.
func waitFor(p *testenv.Process, timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-p.Exited():
			return fmt.Errorf("exited before it was ready (%v)", err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %v", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// profileLoadGenerator writes a Go CPU profile of this process (the load
// generator, which shares the CPUs with the CA) to dir/<name>.pprof while
// a run lasts, when dir is set; the returned func stops it.
func profileLoadGenerator(t *testing.T, dir, name string) func() {
	if dir == "" {
		return func() {}
	}
	f, err := os.Create(filepath.Join(dir, name+".pprof"))
	if err != nil {
		t.Logf("load generator profile: %v", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		t.Logf("load generator profile: %v", err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
		fmt.Fprintf(os.Stdout, "load generator profile: %s\n", f.Name())
	}
}

// startPerf records CPU samples of pid into dir/<name>.perf.data while a
// run lasts, when dir is set, perf is installed and want is true; the
// returned func stops it. `perf report -i FILE --stdio --no-children`
// then shows where the process spent its CPU.
func startPerf(t *testing.T, dir string, pid int, name string, want bool) func() {
	if dir == "" || !want {
		return func() {}
	}
	perf, err := exec.LookPath("perf")
	if err != nil {
		t.Logf("MESHCA_LOADBENCH_PERF_DIR set but perf is not installed: no profile")
		return func() {}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, name+".perf.data")
	cmd := exec.Command(perf, "record", "-F", "499", "-g", "-p", strconv.Itoa(pid), "-o", file)
	logf, _ := os.Create(file + ".log")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Logf("perf record: %v", err)
		return func() {}
	}
	time.Sleep(300 * time.Millisecond) // perf attaches
	return func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		fmt.Fprintf(os.Stdout, "perf profile of %s: %s\n", name, file)
	}
}

// TestBrokerLoadCommand runs `broker load` as an operator would, against
// the broker binary on a real API server: bursts with fresh connections and
// pod-bound tokens, repeated runs, and a steady run over shared connections.
// Gated like the benchmark (MESHCA_LOADBENCH=1).
func TestBrokerLoadCommand(t *testing.T) {
	if os.Getenv("MESHCA_LOADBENCH") != "1" {
		t.Skip("load benchmark: set MESHCA_LOADBENCH=1 (scripts/bench-vs-istio.sh does)")
	}
	if os.Getenv("MESHCA_INTEGRATION") == "" {
		t.Setenv("MESHCA_INTEGRATION", "1")
	}
	kube := testenv.StartKube(t)
	bin := buildBroker(t)
	tg, pid := startBrokerBinary(t, bin, kube, "local", nil)
	rootFile := filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(rootFile, tg.RootsPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	load := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		base := []string{"load", "--kubeconfig", kube.Kubeconfig, "--ca-addr", tg.Addr, "--root-file", rootFile,
			"--ca-pid", strconv.Itoa(pid), "--apiserver-pid", strconv.Itoa(kube.PID()), "--timeout", "1m"}
		out, err := exec.CommandContext(ctx, bin, append(base, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("broker load %v: %v\n%s", args, err, out)
		}
		t.Logf("broker load %s:\n%s", strings.Join(args, " "), out)
		return string(out)
	}
	out := load("-n", "40", "--namespaces", "0", "--bound-pods", "--concurrency", "8", "--runs", "2", "--pause", "1s", "--prefix", "cmd-burst")
	for _, want := range []string{
		"created 40 workloads in 40 namespaces (cmd-burst-*), pod-bound tokens",
		"run 2 of 2", "issued and verified 40, failed 0", "fresh connections",
		"CPU CA (pid " + strconv.Itoa(pid) + ")", "CPU API server (pid " + strconv.Itoa(kube.PID()) + ")",
		"median of 2 runs", "deleted the 40 namespaces created",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	out = load("-n", "30", "--mode", "steady", "--rate", "60", "--shared-connections", "2", "--key", "RSA-2048", "--prefix", "cmd-steady", "--keep")
	for _, want := range []string{"steady at 60/s", "shared/2 connections", "RSA-2048 keys", "issued and verified 30, failed 0"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "deleted") {
		t.Errorf("--keep deleted namespaces:\n%s", out)
	}
}
