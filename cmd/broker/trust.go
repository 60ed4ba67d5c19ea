package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshca/broker/authn/kube"
	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/broker"
	"github.com/meshca/broker/cluster"
	"github.com/meshca/broker/config"
	"github.com/meshca/broker/trust"
)

func trustCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "trust", Short: "Inspect the trust bundle (root rotation)"}
	var path, addr string
	var timeout time.Duration
	var o overrides
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the trust bundle, where it is published, and whether the next rotation step is safe",
		Long: `status computes the trust bundle from the configuration (the backend's roots and the
extra trusted roots), then shows, for every cluster (the local one and those of the remote
secrets), how many namespaces publish exactly that bundle in istio-ca-root-cert, and, with
--addr, which root the broker's serving certificate chains to. The rotation runbook is in
docs/rotation.md.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(path, &o)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			return runTrustStatus(ctx, cmd.OutOrStdout(), cfg, addr)
		},
	}
	status.Flags().StringVar(&path, "config", "", "YAML configuration file [MESHCA_CONFIG]")
	status.Flags().StringVar(&addr, "addr", "", "the broker's address, to check its serving certificate (host:port)")
	status.Flags().DurationVar(&timeout, "timeout", time.Minute, "overall deadline")
	o.register(status)
	cmd.AddCommand(status)
	return cmd
}

func runTrustStatus(ctx context.Context, out io.Writer, cfg *config.Config, addr string) error {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	signer, err := backends.New(ctx, cfg.Backend.Type, backends.Options{Config: cfg.Backend.Settings, DataDir: cfg.DataDir, Logger: log})
	if err != nil {
		return fmt.Errorf("backend %s: %w", cfg.Backend.Type, err)
	}
	if c, ok := signer.(io.Closer); ok {
		defer c.Close()
	}
	bcfg := trust.BundleConfig{Backend: signer.TrustAnchors, Log: log}
	if cfg.ExtraTrustedRoots != "" {
		bcfg.Extra = trust.FileSource(cfg.ExtraTrustedRoots)
	}
	bundle, err := trust.LoadBundle(ctx, bcfg)
	if err != nil {
		return err
	}
	snap := bundle.Current()
	fmt.Fprintf(out, "trust bundle: %d roots\n", len(snap.Roots))
	for _, r := range snap.Roots {
		role := "extra (configured)"
		if slices.ContainsFunc(snap.Backend, r.Equal) {
			role = "backend signs under it"
		}
		fmt.Fprintf(out, "  %s  %s  until %s  [%s]\n", trust.Fingerprint(r)[:16], r.Subject, r.NotAfter.UTC().Format(time.RFC3339), role)
	}
	allPublished := true
	if *cfg.Authn.Kubernetes.Enabled {
		clusters, err := statusClusters(ctx, cfg)
		if err != nil {
			return err
		}
		ids := make([]string, 0, len(clusters))
		for id := range clusters {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			ok, err := publishedStatus(ctx, out, id, clusters[id], snap.PEM)
			if err != nil {
				fmt.Fprintf(out, "cluster %s: %v\n", id, err)
			}
			allPublished = allPublished && ok && err == nil
		}
	}
	if addr != "" {
		pool, _ := bundle.Pool(ctx)
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "istiod.istio-system.svc", MinVersion: tls.VersionTLS12})
		if err != nil {
			fmt.Fprintf(out, "serving certificate at %s: does not verify to the bundle: %v\n", addr, err)
			allPublished = false
		} else {
			chain := conn.ConnectionState().VerifiedChains[0]
			fmt.Fprintf(out, "serving certificate at %s: chains to %s (%s)\n", addr, chain[len(chain)-1].Subject, trust.Fingerprint(chain[len(chain)-1])[:16])
			conn.Close()
		}
	}
	fmt.Fprintln(out, "next step:")
	extra := slices.DeleteFunc(slices.Clone(snap.Roots), func(r *x509.Certificate) bool { return slices.ContainsFunc(snap.Backend, r.Equal) })
	switch {
	case !allPublished:
		fmt.Fprintln(out, "  NOT SAFE: the bundle is not yet published everywhere; wait (or fix the clusters above) before switching signing or dropping a root")
	case len(extra) == 0:
		fmt.Fprintln(out, "  no rotation in progress (the bundle is the backend's roots); to start one, add the new root to extraTrustedRoots")
	default:
		fmt.Fprintf(out, "  safe to switch signing to a CA under an extra root, or, if the backend already signs under the new root, to drop the old one from extraTrustedRoots once the longest certificate lifetime (policy.maxTTL = %s) has passed since the switch\n", cfg.Policy.MaxTTL.Duration)
	}
	return nil
}

// statusClusters is the local cluster and those of the remote secrets.
func statusClusters(ctx context.Context, cfg *config.Config) (map[string]kubernetes.Interface, error) {
	rc, err := kube.RESTConfig(cfg.Authn.Kubernetes.Kubeconfig)
	if err != nil {
		return nil, err
	}
	local, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	out := map[string]kubernetes.Interface{cfg.ClusterID: local}
	cl := cfg.Authn.Kubernetes.Clusters
	if !*cl.RemoteSecrets {
		return out, nil
	}
	secrets, err := local.CoreV1().Secrets(cl.SecretNamespace).List(ctx, metav1.ListOptions{LabelSelector: cluster.MultiClusterLabel + "=true"})
	if err != nil {
		return nil, fmt.Errorf("listing remote secrets: %w", err)
	}
	policy := broker.KubeconfigPolicy(cl)
	for _, s := range secrets.Items {
		for id, kc := range s.Data {
			if _, dup := out[id]; dup {
				continue
			}
			var rrc *rest.Config
			if rrc, err = cluster.RESTConfigFromKubeconfig(kc, policy); err != nil {
				fmt.Fprintf(os.Stderr, "remote secret %s/%s key %s refused: %v\n", s.Namespace, s.Name, id, err)
				continue
			}
			if c, err := kubernetes.NewForConfig(rrc); err == nil {
				out[id] = c
			}
		}
	}
	return out, nil
}

// publishedStatus prints how many namespaces of one cluster publish the
// bundle, and reports whether all do.
func publishedStatus(ctx context.Context, out io.Writer, id string, c kubernetes.Interface, want []byte) (bool, error) {
	nss, err := c.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return false, err
	}
	cms, err := c.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=istio-ca-root-cert"})
	if err != nil {
		return false, err
	}
	byNS := map[string]string{}
	for _, cm := range cms.Items {
		byNS[cm.Namespace] = cm.Data["root-cert.pem"]
	}
	var total, exact int
	others := map[string]int{}
	for _, ns := range nss.Items {
		if ns.Status.Phase == corev1.NamespaceTerminating || ns.DeletionTimestamp != nil {
			continue
		}
		total++
		got, ok := byNS[ns.Name]
		switch {
		case ok && got == string(want):
			exact++
		case ok:
			others[describePEM(got)]++
		default:
			others["(missing)"]++
		}
	}
	fmt.Fprintf(out, "cluster %s: %d of %d namespaces publish the bundle\n", id, exact, total)
	keys := make([]string, 0, len(others))
	for k := range others {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(out, "  %d namespaces hold %s\n", others[k], k)
	}
	return exact == total, nil
}

func describePEM(s string) string {
	var fps []string
	for rest := []byte(s); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			fps = append(fps, trust.Fingerprint(c)[:16])
		}
	}
	if len(fps) == 0 {
		return "something that is not a PEM bundle"
	}
	return "roots [" + strings.Join(fps, " ") + "]"
}
