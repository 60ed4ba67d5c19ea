package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/broker/authn"
	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/caclient"
	"github.com/meshca/broker/config"
	"github.com/meshca/broker/policy"
	"github.com/meshca/broker/verify"
)

func checkCmd() *cobra.Command {
	var path, namespace, serviceAccount string
	var timeout time.Duration
	var o overrides
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Validate the configuration and make one real test issuance through the backend",
		Long: `check validates the configuration, then asks the configured backend to sign one
certificate for a throwaway key, exactly as the broker would for a workload, and verifies it
against the trust anchors: prove a backend before pointing a mesh at it.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(path, &o)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			return runCheck(ctx, cmd.OutOrStdout(), cfg, namespace, serviceAccount)
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "YAML configuration file [MESHCA_CONFIG]")
	cmd.Flags().StringVar(&namespace, "namespace", "meshca-check", "namespace of the test identity")
	cmd.Flags().StringVar(&serviceAccount, "service-account", "meshca-check", "service account of the test identity")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "overall deadline")
	o.register(cmd)
	return cmd
}

func runCheck(ctx context.Context, out io.Writer, cfg *config.Config, namespace, sa string) error {
	// The whole configuration is checked before it is called valid: the
	// policy, and the backend section, which only the backend can judge.
	pol, err := policy.New(cfg.PolicyConfig())
	if err != nil {
		return fmt.Errorf("configuration: policy: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	signer, err := backends.New(ctx, cfg.Backend.Type, backends.Options{Config: cfg.Backend.Settings, DataDir: cfg.DataDir, Logger: log})
	if err != nil {
		return fmt.Errorf("configuration: backend %s: %w", cfg.Backend.Type, err)
	}
	if c, ok := signer.(io.Closer); ok {
		defer c.Close()
	}
	fmt.Fprintf(out, "configuration: valid (backend %s, trust domain %s)\n", cfg.Backend.Type, cfg.TrustDomain)
	anchors, err := signer.TrustAnchors(ctx)
	if err != nil {
		return fmt.Errorf("reading trust anchors: %w", err)
	}
	fmt.Fprintf(out, "trust anchors: %d\n", len(anchors))
	for _, a := range anchors {
		fmt.Fprintf(out, "  %s (until %s)\n", a.Subject, a.NotAfter.UTC().Format(time.RFC3339))
	}
	id, err := spiffeid.FromSegments(spiffeid.RequireTrustDomainFromString(cfg.TrustDomain), "ns", namespace, "sa", sa)
	if err != nil {
		return err
	}
	key, err := caclient.NewKey(true)
	if err != nil {
		return err
	}
	csrPEM, err := caclient.CSR(key, id.String())
	if err != nil {
		return err
	}
	// The same path a workload's request takes, minus authentication.
	d, err := pol.Authorize(&authn.Identity{ID: id, Method: "check"}, policy.Request{CSRPEM: csrPEM, ValiditySeconds: int64(cfg.Policy.MinTTL.Seconds())})
	if err != nil {
		return err
	}
	req := &backends.Request{CSR: d.CSR, Template: d.Template}
	start := time.Now()
	issued, err := signer.Sign(ctx, req)
	if err != nil {
		return fmt.Errorf("test issuance failed: %w", err)
	}
	fmt.Fprintf(out, "test issuance: ok in %s, %d certificates returned\n", time.Since(start).Round(time.Millisecond), len(issued))
	chain, err := verify.Chain(req, issued, anchors, time.Now())
	for i, c := range issued {
		fmt.Fprintf(out, "  [%d] %s issued by %s\n", i, name(c), c.Issuer)
	}
	if err != nil {
		fmt.Fprintf(out, "verification: FAILED: %v\n", err)
		return err
	}
	fmt.Fprintf(out, "verification: ok (%s, chain of %d to %s)\n", id, len(chain), chain[len(chain)-1].Subject)
	return nil
}

func name(c *x509.Certificate) string {
	if len(c.URIs) > 0 {
		return c.URIs[0].String()
	}
	if s := c.Subject.String(); s != "" {
		return s
	}
	return "(empty subject)"
}
