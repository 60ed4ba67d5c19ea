package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshca/broker/caclient"
	"github.com/meshca/broker/loadgen"
)

type loadFlags struct {
	kubeconfig, caAddr, rootFile, serverName, clusterID, trustDomain string
	prefix, mode, key                                                string
	workloads, namespaces, concurrency, shared, setupConcurrency     int
	runs, caPID, apiserverPID, kubeBurst                             int
	rate, kubeQPS                                                    float64
	boundPods, noRetry, keep                                         bool
	ttl, requestTimeout, timeout, pause                              time.Duration
}

func loadCmd() *cobra.Command {
	var f loadFlags
	cmd := &cobra.Command{
		Use:   "load",
		Short: "Load a CA (the broker or istiod) as a mass restart of pods would, and report",
		Long: `load creates N distinct workloads in a Kubernetes cluster (a ServiceAccount each, and a real
TokenRequest token with audience istio-ca, optionally bound to a Pending pod), then requests one
certificate per workload from the CA at --ca-addr as the Istio agent does: a fresh TLS connection
per workload (as a restarting pod makes; --shared-connections to reuse), the agent's retries on
retryable codes, every returned chain verified (the workload's key, its SPIFFE ID, a chain to the
roots in --root-file). Keys and CSRs are made before the clock starts, and the chains are verified
after it stops (the CA's TLS certificate once per distinct certificate): a restarting pod does
that work on its own node, while this command may share the CA's CPUs.

It reports certificates/s, p50/p90/p99 latency, failures by gRPC code and, given their process
IDs on this host, the CPU time per certificate of the CA and of the API server (from /proc).
The namespaces it created are deleted at the end unless --keep.

Works against the broker and against istiod alike (the same protocol), so the two can be
compared on the same cluster. kube-apiserver caches a successful TokenReview for 10s: repeated
runs on the same identities (--runs) pause --pause between runs.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runLoad(cmd.Context(), cmd.OutOrStdout(), &f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig with rights to create namespaces, service accounts, pods and tokens (default: $KUBECONFIG or ~/.kube/config)")
	fl.StringVar(&f.caAddr, "ca-addr", "127.0.0.1:15012", "the CA's gRPC-over-TLS address")
	fl.StringVar(&f.rootFile, "root-file", "", "PEM roots of the CA (its TLS certificate and every issued chain must chain to them) (required)")
	fl.StringVar(&f.serverName, "server-name", caclient.DefaultServerName, "name checked on the CA's TLS certificate")
	fl.StringVar(&f.clusterID, "cluster-id", "Kubernetes", "clusterid metadata sent (the agent's ISTIO_META_CLUSTER_ID; empty sends none)")
	fl.StringVar(&f.trustDomain, "trust-domain", "cluster.local", "trust domain the CA certifies")
	fl.IntVarP(&f.workloads, "workloads", "n", 100, "distinct workloads (service accounts and tokens)")
	fl.IntVar(&f.namespaces, "namespaces", 1, "spread the workloads over this many namespaces (0: one namespace per workload)")
	fl.StringVar(&f.prefix, "prefix", "meshca-load", "namespace name prefix (<prefix>-<i>); another prefix gives other identities")
	fl.BoolVar(&f.boundPods, "bound-pods", false, "create a Pending pod per workload (spec.nodeName set) and bind its token to it; not on clusters whose pod garbage collector removes pods of unknown nodes")
	fl.IntVar(&f.setupConcurrency, "setup-concurrency", 32, "API calls in flight while creating workloads")
	fl.Float64Var(&f.kubeQPS, "kube-qps", 200, "client QPS towards the API server while creating workloads")
	fl.IntVar(&f.kubeBurst, "kube-burst", 400, "client burst towards the API server while creating workloads")
	fl.StringVar(&f.mode, "mode", "burst", "burst (all workloads as fast as --concurrency allows) or steady (--rate per second)")
	fl.IntVar(&f.concurrency, "concurrency", 16, "concurrent callers")
	fl.Float64Var(&f.rate, "rate", 100, "steady mode: requests started per second")
	fl.IntVar(&f.shared, "shared-connections", 0, "send over this many shared TLS connections instead of a fresh one per workload")
	fl.StringVar(&f.key, "key", "ECDSA-P256", "workload key: ECDSA-P256 or RSA-2048 (the agent's default; slow to pre-generate in bulk)")
	fl.DurationVar(&f.ttl, "ttl", 24*time.Hour, "requested certificate lifetime")
	fl.BoolVar(&f.noRetry, "no-retry", false, "send each request once instead of retrying as the agent does")
	fl.DurationVar(&f.requestTimeout, "request-timeout", 30*time.Second, "bound on one workload's request, retries included")
	fl.DurationVar(&f.timeout, "timeout", 10*time.Minute, "bound on each run")
	fl.IntVar(&f.runs, "runs", 1, "runs on the same workloads (fresh keys each time)")
	fl.DurationVar(&f.pause, "pause", 11*time.Second, "pause between runs (more than kube-apiserver's 10s TokenReview cache)")
	fl.IntVar(&f.caPID, "ca-pid", 0, "process ID of the CA on this host, for CPU per certificate")
	fl.IntVar(&f.apiserverPID, "apiserver-pid", 0, "process ID of kube-apiserver on this host, for CPU per certificate")
	fl.BoolVar(&f.keep, "keep", false, "keep the namespaces created")
	return cmd
}

func runLoad(ctx context.Context, out io.Writer, f *loadFlags) error {
	if f.rootFile == "" {
		return errors.New("--root-file is required")
	}
	if f.workloads <= 0 || f.runs <= 0 {
		return errors.New("--workloads and --runs must be positive")
	}
	mode, err := loadgen.ParseMode(f.mode)
	if err != nil {
		return err
	}
	kt, err := loadgen.ParseKeyType(f.key)
	if err != nil {
		return err
	}
	roots, err := os.ReadFile(f.rootFile)
	if err != nil {
		return err
	}
	if _, err := loadgen.ParseRoots(roots); err != nil {
		return fmt.Errorf("%s: %w", f.rootFile, err)
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = f.kubeconfig
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	rc.QPS, rc.Burst = float32(f.kubeQPS), f.kubeBurst
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}

	setupCtx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	set, err := loadgen.Setup(setupCtx, client, loadgen.SetupOptions{
		N: f.workloads, Prefix: f.prefix, Namespaces: f.namespaces, BoundPods: f.boundPods, Concurrency: f.setupConcurrency,
	})
	cancel()
	if set != nil && !f.keep {
		defer func() {
			cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := set.Cleanup(cctx, client); err != nil {
				fmt.Fprintln(out, "cleanup:", err)
			} else if len(set.Created) > 0 {
				fmt.Fprintf(out, "deleted the %d namespaces created\n", len(set.Created))
			}
		}()
	}
	if err != nil {
		return err
	}
	pods := ""
	if f.boundPods {
		pods = ", pod-bound tokens"
	}
	fmt.Fprintf(out, "created %d workloads in %d namespaces (%s-*)%s in %.1fs\n",
		len(set.Workloads), len(set.Namespaces), f.prefix, pods, set.Took.Seconds())

	target := loadgen.Target{Name: f.caAddr, Addr: f.caAddr, RootsPEM: roots, ServerName: f.serverName, ClusterID: f.clusterID, TrustDomain: f.trustDomain}
	opts := loadgen.Options{
		Mode: mode, Concurrency: f.concurrency, Rate: f.rate, SharedConnections: f.shared, TTL: f.ttl,
		NoRetry: f.noRetry, RequestTimeout: f.requestTimeout, Timeout: f.timeout, CAPID: f.caPID, APIServerPID: f.apiserverPID,
	}
	var reports []*loadgen.Report
	for run := 1; run <= f.runs; run++ {
		if run > 1 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(f.pause):
			}
		}
		if err := loadgen.PrepareKeys(ctx, set.Workloads, kt, f.trustDomain); err != nil {
			return err
		}
		r, err := loadgen.Run(ctx, target, set.Workloads, opts)
		if err != nil {
			return err
		}
		if f.runs > 1 {
			fmt.Fprintf(out, "run %d of %d\n", run, f.runs)
		}
		r.Write(out)
		reports = append(reports, r)
	}
	if f.runs > 1 {
		loadgen.WriteTable(out, fmt.Sprintf("median of %d runs", f.runs), []loadgen.Column{{Name: f.caAddr, Reports: reports}})
	}
	for _, r := range reports {
		if r.FailedTotal() > 0 {
			return fmt.Errorf("%d of %d workloads got no verified certificate in at least one run", r.FailedTotal(), r.Workloads)
		}
	}
	return nil
}
