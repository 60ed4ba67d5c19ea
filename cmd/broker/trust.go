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
	"github.com/meshca/broker/publish"
	"github.com/meshca/broker/trust"
)

func trustCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "trust", Short: "Inspect the trust bundle (root rotation)"}
	var path, addr string
	var timeout, propagation time.Duration
	var o overrides
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the trust bundle, where it is published, and whether the next rotation step is safe",
		Long: `status computes the trust bundle from the configuration (the backend's roots and the
extra trusted roots), then shows, for every cluster (the local one and those of the remote
secrets), how many of the namespaces the publisher serves (publish.namespaceSelector) publish
exactly that bundle in istio-ca-root-cert and how long ago the last of them was written (pods
see a ConfigMap change only after the kubelet's sync: the next step is safe --propagation after
that), and, with --addr, which root the broker's serving certificate chains to. The rotation
runbook is in docs/rotation.md.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(path, &o)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			return runTrustStatus(ctx, cmd.OutOrStdout(), cfg, addr, propagation)
		},
	}
	status.Flags().StringVar(&path, "config", "", "YAML configuration file [MESHCA_CONFIG]")
	status.Flags().StringVar(&addr, "addr", "", "the broker's address, to check its serving certificate (host:port)")
	status.Flags().DurationVar(&timeout, "timeout", time.Minute, "overall deadline")
	status.Flags().DurationVar(&propagation, "propagation", 2*time.Minute, "how long after the last ConfigMap write every pod mounting it sees the change (the kubelet's sync period, 1m by default, plus its cache)")
	o.register(status)
	cmd.AddCommand(status)
	return cmd
}

func runTrustStatus(ctx context.Context, out io.Writer, cfg *config.Config, addr string, propagation time.Duration) error {
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
		selector := ""
		if *cfg.Publish.Enabled {
			selector = cfg.Publish.NamespaceSelector
		}
		serves, err := publish.NamespaceFilter(selector)
		if err != nil {
			return fmt.Errorf("publish.namespaceSelector: %w", err)
		}
		if selector != "" {
			fmt.Fprintf(out, "namespaces counted: those publish.namespaceSelector %q selects\n", selector)
		}
		var lastWrite time.Time
		for _, id := range ids {
			ok, written, err := publishedStatus(ctx, out, id, clusters[id], snap.PEM, serves)
			if err != nil {
				fmt.Fprintf(out, "cluster %s: %v\n", id, err)
			}
			allPublished = allPublished && ok && err == nil
			if written.After(lastWrite) {
				lastWrite = written
			}
		}
		// A ConfigMap reaches the pods that mount it only after the
		// kubelet's sync (up to about a minute) and its cache; until then
		// an agent still reads the old root-cert.pem.
		if since := time.Since(lastWrite); allPublished && !lastWrite.IsZero() && since < propagation {
			fmt.Fprintf(out, "last namespace written %s ago: pods see a ConfigMap up to %s after it changes (kubelet sync and cache)\n", since.Round(time.Second), propagation)
			allPublished = false
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
		fmt.Fprintln(out, "  NOT SAFE: the bundle is not yet published everywhere, or not for long enough; wait (or fix the clusters above) before switching signing or dropping a root")
	case len(extra) == 0:
		fmt.Fprintln(out, "  no rotation in progress (the bundle is the backend's roots); to start one, add the new root to extraTrustedRoots")
	default:
		// Every certificate under the old root must have expired or been
		// renewed: workloads', the broker's own and istiod's.
		longest := max(cfg.Policy.MaxTTL.Duration, cfg.TLS.TTL.Duration, cfg.Istiod.TTL.Duration)
		fmt.Fprintf(out, "  safe to switch signing to a CA under an extra root, or, if the backend already signs under the new root, to drop the old one from extraTrustedRoots once the longest certificate lifetime (%s: the largest of policy.maxTTL, tls.ttl and istiod.ttl) has passed since the switch\n", longest)
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

// publishedStatus prints how many of the namespaces the publisher serves
// in one cluster publish the bundle, and reports whether all do and when
// the last of those ConfigMaps was written.
func publishedStatus(ctx context.Context, out io.Writer, id string, c kubernetes.Interface, want []byte, serves func(*corev1.Namespace) bool) (bool, time.Time, error) {
	var lastWrite time.Time
	nss, err := c.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return false, lastWrite, err
	}
	cms, err := c.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + publish.ConfigMapName})
	if err != nil {
		return false, lastWrite, err
	}
	byNS := map[string]*corev1.ConfigMap{}
	for i := range cms.Items {
		byNS[cms.Items[i].Namespace] = &cms.Items[i]
	}
	var total, exact int
	others := map[string]int{}
	for i := range nss.Items {
		ns := &nss.Items[i]
		if !serves(ns) {
			continue
		}
		total++
		cm, ok := byNS[ns.Name]
		got := ""
		if ok {
			got = cm.Data[publish.DataKey]
		}
		switch {
		case ok && got == string(want):
			exact++
			for _, mf := range cm.ManagedFields {
				if mf.Time != nil && mf.Time.After(lastWrite) {
					lastWrite = mf.Time.Time
				}
			}
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
	return exact == total, lastWrite, nil
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
