// Command broker is Mesh CA Broker: an Istio certificate authority that
// authenticates workloads, applies a SPIFFE-ID policy and has an
// enterprise PKI sign. `broker serve` runs it, `broker demo` shows the whole
// issue path on the embedded local CA with no cluster, `broker check`
// proves a configured backend with one test issuance.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/broker/broker"
	"github.com/meshca/broker/config"
)

// version is set with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "broker:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "broker",
		Short:         "Mesh CA Broker: Istio's CA protocol in front of your enterprise PKI",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(serveCmd(), demoCmd(), checkCmd(), versionCmd(), trustCmd())
	root.AddCommand(loadCmd())
	return root
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		RunE: func(cmd *cobra.Command, _ []string) error {
			goVersion := ""
			if bi, ok := debug.ReadBuildInfo(); ok {
				goVersion = bi.GoVersion
			}
			fmt.Fprintf(cmd.OutOrStdout(), "broker %s (%s)\n", version, goVersion)
			return nil
		},
	}
}

// overrides are the common settings that flags and environment variables
// can set over the file: flag beats environment beats file.
type overrides struct {
	listen, metricsListen, trustDomain, clusterID, dataDir, backend, logLevel, kubeconfig string
}

func (o *overrides) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "", "gRPC listen address [MESHCA_LISTEN] (default :15012)")
	f.StringVar(&o.metricsListen, "metrics-listen", "", "metrics and health address, or off [MESHCA_METRICS_LISTEN] (default :15014)")
	f.StringVar(&o.trustDomain, "trust-domain", "", "SPIFFE trust domain [MESHCA_TRUST_DOMAIN] (default cluster.local)")
	f.StringVar(&o.clusterID, "cluster-id", "", "this cluster's ID as Istio names it [MESHCA_CLUSTER_ID] (default Kubernetes)")
	f.StringVar(&o.dataDir, "data-dir", "", "state directory [MESHCA_DATA_DIR] (default /var/lib/meshca)")
	f.StringVar(&o.backend, "backend", "", "backend type [MESHCA_BACKEND] (default local)")
	f.StringVar(&o.logLevel, "log-level", "", "debug, info, warn or error [MESHCA_LOG_LEVEL]")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig for TokenReview; empty means in-cluster [MESHCA_KUBECONFIG]")
}

func (o *overrides) apply(cfg *config.Config) {
	set := func(dst *string, flag, env string) {
		if flag != "" {
			*dst = flag
		} else if v := os.Getenv(env); v != "" {
			*dst = v
		}
	}
	set(&cfg.Listen, o.listen, "MESHCA_LISTEN")
	set(&cfg.MetricsListen, o.metricsListen, "MESHCA_METRICS_LISTEN")
	set(&cfg.TrustDomain, o.trustDomain, "MESHCA_TRUST_DOMAIN")
	set(&cfg.ClusterID, o.clusterID, "MESHCA_CLUSTER_ID")
	set(&cfg.DataDir, o.dataDir, "MESHCA_DATA_DIR")
	set(&cfg.Backend.Type, o.backend, "MESHCA_BACKEND")
	set(&cfg.Log.Level, o.logLevel, "MESHCA_LOG_LEVEL")
	set(&cfg.Authn.Kubernetes.Kubeconfig, o.kubeconfig, "MESHCA_KUBECONFIG")
}

// loadConfig reads the file (if any), applies overrides and defaults, and
// validates.
func loadConfig(path string, o *overrides) (*config.Config, error) {
	if path == "" {
		path = os.Getenv("MESHCA_CONFIG")
	}
	cfg := &config.Config{}
	if path != "" {
		var err error
		if cfg, err = config.Load(path); err != nil {
			return nil, err
		}
	}
	o.apply(cfg)
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	return cfg, nil
}

func serveCmd() *cobra.Command {
	var path string
	var o overrides
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the broker",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(path, &o)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log := broker.NewLogger(cfg.Log)
			broker.RouteClientGoLogs(log)
			log.Info("garbage collector", "settings", tuneGC())
			startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			b, err := broker.Start(startCtx, cfg, broker.Options{Logger: log})
			cancel()
			if err != nil {
				return err
			}
			err = b.Wait(ctx)
			drain, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			b.Stop(drain)
			return err
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "YAML configuration file [MESHCA_CONFIG]")
	o.register(cmd)
	return cmd
}
