package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/broker/broker"
	"github.com/meshca/broker/caclient"
	"github.com/meshca/broker/config"
	"github.com/meshca/broker/devissuer"
)

func demoCmd() *cobra.Command {
	var namespace, serviceAccount, dataDir string
	var useRSA, verbose bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Issue one workload certificate end to end on the embedded local CA, with no cluster",
		Long: `demo starts the broker on 127.0.0.1 with the local CA and a JWKS authenticator for a
generated service-account issuer, mints a Kubernetes-style service-account token, then acts as
the Istio agent does (fresh key, CSR, CreateCertificate over TLS) and prints what it got.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemo(cmd.Context(), cmd.OutOrStdout(), demoOptions{namespace, serviceAccount, dataDir, useRSA, verbose})
		},
	}
	cmd.Flags().StringVar(&namespace, "namespace", "default", "workload namespace")
	cmd.Flags().StringVar(&serviceAccount, "service-account", "demo", "workload service account")
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "keep the generated root here (default: a temporary directory)")
	cmd.Flags().BoolVar(&useRSA, "rsa", false, "use an RSA-2048 workload key, the agent's default (default ECDSA P-256)")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "show the broker's log")
	return cmd
}

type demoOptions struct {
	namespace, serviceAccount, dataDir string
	rsa, verbose                       bool
}

func runDemo(ctx context.Context, out io.Writer, o demoOptions) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	work, err := os.MkdirTemp("", "meshca-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if o.dataDir == "" {
		o.dataDir = filepath.Join(work, "data")
	}

	// A stand-in for a cluster's service-account issuer: its signing key
	// and the JWKS the broker verifies tokens against.
	iss, err := devissuer.New(devissuer.DefaultIssuer)
	if err != nil {
		return err
	}
	jwksFile := filepath.Join(work, "jwks.json")
	if err := iss.WriteJWKS(jwksFile); err != nil {
		return err
	}

	f := false
	cfg := &config.Config{
		Listen:        "127.0.0.1:0",
		MetricsListen: "off",
		DataDir:       o.dataDir,
		Authn: config.Authn{
			Kubernetes: config.Kubernetes{Enabled: &f},
			// The agent's default cluster ID; with authn.kubernetes off no
			// cluster is checked against live objects, so the key set may
			// take it.
			JWKS: []config.JWKS{{Issuer: iss.URL, File: jwksFile, ClusterID: "Kubernetes"}},
		},
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	logOut := io.Discard
	if o.verbose {
		logOut = os.Stderr
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	b, err := broker.Start(ctx, cfg, broker.Options{Listener: lis, Logger: slog.New(slog.NewTextHandler(logOut, nil))})
	if err != nil {
		return err
	}
	defer b.Stop(context.Background())
	fmt.Fprintf(out, "broker listening on %s (local CA in %s)\n", b.Addr(), o.dataDir)

	token, err := iss.Token(o.namespace, o.serviceAccount, []string{"istio-ca"}, 10*time.Minute)
	if err != nil {
		return err
	}
	rootsPEM, err := b.RootsPEM(ctx)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootsPEM)

	// Now act as the Istio agent.
	cl, err := caclient.Dial(b.Addr(), roots, caclient.DefaultServerName, nil)
	if err != nil {
		return err
	}
	defer cl.Close()
	key, err := caclient.NewKey(!o.rsa)
	if err != nil {
		return err
	}
	spiffeID := fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", cfg.TrustDomain, o.namespace, o.serviceAccount)
	issued, err := cl.CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: spiffeID, Token: token, ClusterID: cfg.ClusterID, TTL: 24 * time.Hour})
	if err != nil {
		return fmt.Errorf("CreateCertificate: %w", err)
	}
	return describe(out, issued, key.Public(), roots)
}

func describe(out io.Writer, issued *caclient.Issued, pub crypto.PublicKey, roots *x509.CertPool) error {
	leaf := issued.Chain[0]
	fmt.Fprintf(out, "\nissued certificate\n")
	for _, u := range leaf.URIs {
		fmt.Fprintf(out, "  SPIFFE ID:  %s\n", u)
	}
	fmt.Fprintf(out, "  serial:     %x\n", leaf.SerialNumber)
	fmt.Fprintf(out, "  valid:      %s to %s (%s)\n", leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), leaf.NotAfter.Sub(leaf.NotBefore))
	fmt.Fprintf(out, "  key:        %s\n", keyName(leaf))
	fmt.Fprintf(out, "\nchain (%d entries, leaf first):\n", len(issued.Chain))
	for i, c := range issued.Chain {
		subj := c.Subject.String()
		if subj == "" {
			subj = "(empty subject)"
		}
		fmt.Fprintf(out, "  [%d] %s  issued by %s\n", i, subj, c.Issuer.String())
	}
	inter := x509.NewCertPool()
	for _, c := range issued.Chain[1:] {
		inter.AddCert(c)
	}
	_, verr := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	keyOK := false
	if k, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); ok {
		keyOK = k.Equal(pub)
	}
	fmt.Fprintf(out, "\nchain verifies to the broker's root: %v\nleaf holds the workload's key:      %v\n", verr == nil, keyOK)
	fmt.Fprintf(out, "\nleaf certificate:\n%s", strings.TrimRight(issued.ChainPEM[0], "\n")+"\n")
	if verr != nil || !keyOK {
		return fmt.Errorf("the issued certificate did not check out: %v", verr)
	}
	return nil
}

func keyName(c *x509.Certificate) string {
	switch k := c.PublicKey.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case interface{ Size() int }:
		return fmt.Sprintf("RSA-%d", k.Size()*8)
	}
	return c.PublicKeyAlgorithm.String()
}
