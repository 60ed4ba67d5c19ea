// Package mtls authenticates a workload by the client certificate it
// presents in the TLS handshake: a SPIFFE certificate this mesh issued
// earlier, so an agent can renew without a fresh service-account token.
//
// The TLS layer has already checked that the client holds the
// certificate's private key (any tls.Config.ClientAuth other than
// NoClientCert makes the client sign the handshake); this package checks
// everything else: the chain to the current trust anchors, validity,
// usage, and the SPIFFE ID.
package mtls

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/broker/authn"
)

// maxChain bounds what a client may make the broker parse and verify.
const maxChain = 8

// Config configures an Authenticator.
type Config struct {
	// TrustDomain is the primary trust domain: identities are returned in
	// it whatever accepted trust domain the certificate names.
	TrustDomain spiffeid.TrustDomain
	// Aliases are other trust domains whose certificates are accepted
	// (Istio's trustDomainAliases, e.g. after a trust-domain migration).
	Aliases []spiffeid.TrustDomain
	// Anchors returns the current root certificates. It is called for
	// every request so rotated roots take effect at once.
	Anchors func(ctx context.Context) ([]*x509.Certificate, error)
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
	// ServiceAccountExists, if set, is asked whether the certificate's
	// service account still exists in some cluster the broker knows, so
	// that a deleted workload cannot keep renewing until its certificate
	// runs out. It returns the cluster that has it; decided is false when
	// no cluster's view is current enough to say (the caller is then told
	// to retry).
	ServiceAccountExists func(ctx context.Context, namespace, name string) (cluster string, exists, decided bool)
	// IssuedBy, if set, must accept the certificate directly above the
	// leaf in the verified chain: only what the broker's own issuing CAs
	// signed renews, not everything else the trust anchor signed.
	IssuedBy func(issuer *x509.Certificate) bool
}

// Authenticator implements authn.Authenticator for client certificates.
type Authenticator struct {
	primary spiffeid.TrustDomain
	aliases []spiffeid.TrustDomain
	anchors func(ctx context.Context) ([]*x509.Certificate, error)
	now     func() time.Time
	exists  func(ctx context.Context, namespace, name string) (string, bool, bool)
	issued  func(*x509.Certificate) bool
}

var _ authn.Authenticator = (*Authenticator)(nil)

// New validates cfg.
func New(cfg Config) (*Authenticator, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("mtls authenticator: trust domain is required")
	}
	if cfg.Anchors == nil {
		return nil, errors.New("mtls authenticator: trust anchors are required")
	}
	a := &Authenticator{primary: cfg.TrustDomain, anchors: cfg.Anchors, now: cfg.Now, exists: cfg.ServiceAccountExists, issued: cfg.IssuedBy}
	for _, td := range cfg.Aliases {
		if td.IsZero() {
			return nil, errors.New("mtls authenticator: empty trust domain alias")
		}
		if td != cfg.TrustDomain && !slices.Contains(a.aliases, td) {
			a.aliases = append(a.aliases, td)
		}
	}
	if a.now == nil {
		a.now = time.Now
	}
	return a, nil
}

// Name implements authn.Authenticator.
func (a *Authenticator) Name() string { return "mtls" }

// Authenticate implements authn.Authenticator.
func (a *Authenticator) Authenticate(ctx context.Context, req *authn.Request) (*authn.Identity, error) {
	if req == nil || len(req.PeerCertificates) == 0 {
		return nil, fmt.Errorf("%w: no client certificate", authn.ErrNoCredential)
	}
	chain := req.PeerCertificates
	if len(chain) > maxChain {
		return nil, fmt.Errorf("%w: client certificate chain has %d certificates (at most %d)", authn.ErrDenied, len(chain), maxChain)
	}
	leaf := chain[0]
	if leaf == nil {
		return nil, fmt.Errorf("%w: empty client certificate", authn.ErrDenied)
	}
	serial := "unknown"
	if leaf.SerialNumber != nil {
		serial = leaf.SerialNumber.Text(16)
	}
	// A CA certificate signed by (or being) a trust anchor would verify,
	// but no workload is a CA.
	if leaf.IsCA {
		return nil, fmt.Errorf("%w: client certificate %s is a CA certificate", authn.ErrDenied, serial)
	}

	roots, err := a.anchors(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: client certificate: trust anchors: %v", authn.ErrUnavailable, err)
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("%w: client certificate: no trust anchors loaded", authn.ErrUnavailable)
	}
	opts := x509.VerifyOptions{
		Roots:         x509.NewCertPool(),
		Intermediates: x509.NewCertPool(),
		CurrentTime:   a.now(),
		// A leaf without extended key usage counts as valid for any use
		// in crypto/x509, so this also admits such certificates.
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, r := range roots {
		opts.Roots.AddCert(r)
	}
	for _, c := range chain[1:] {
		if c != nil {
			opts.Intermediates.AddCert(c)
		}
	}
	chains, err := leaf.Verify(opts)
	if err != nil {
		return nil, fmt.Errorf("%w: client certificate %s: %v", authn.ErrDenied, serial, err)
	}
	if a.issued != nil && !slices.ContainsFunc(chains, func(c []*x509.Certificate) bool { return len(c) > 1 && a.issued(c[1]) }) {
		return nil, fmt.Errorf("%w: client certificate %s was issued by %q, which is not a CA this broker issues with (it chains to the trust anchors, but so does whatever else they signed)", authn.ErrDenied, serial, leaf.Issuer.String())
	}

	if len(leaf.URIs) != 1 {
		return nil, fmt.Errorf("%w: client certificate %s has %d URI SANs, want exactly one SPIFFE ID", authn.ErrDenied, serial, len(leaf.URIs))
	}
	id, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil {
		return nil, fmt.Errorf("%w: client certificate %s: URI SAN %q is not a SPIFFE ID: %v", authn.ErrDenied, serial, leaf.URIs[0].String(), err)
	}
	if td := id.TrustDomain(); td != a.primary && !slices.Contains(a.aliases, td) {
		return nil, fmt.Errorf("%w: client certificate %s: trust domain %q is not accepted (want %q%s)", authn.ErrDenied, serial, td.Name(), a.primary.Name(), aliasList(a.aliases))
	}
	ns, sa, err := authn.ParseWorkloadID(id)
	if err != nil {
		return nil, fmt.Errorf("client certificate %s: %w", serial, err)
	}
	// Renewals land in the primary trust domain, which is how workloads
	// migrate off an alias.
	primaryID, err := authn.WorkloadID(a.primary, ns, sa)
	if err != nil {
		return nil, fmt.Errorf("client certificate %s: %w", serial, err)
	}
	var cluster string
	if a.exists != nil {
		c, exists, decided := a.exists(ctx, ns, sa)
		switch {
		case !decided:
			return nil, fmt.Errorf("%w: client certificate %s: cannot tell whether service account %s/%s still exists (no cluster's API server answered)", authn.ErrUnavailable, serial, ns, sa)
		case !exists:
			return nil, fmt.Errorf("%w: client certificate %s: service account %s/%s no longer exists in any known cluster", authn.ErrDenied, serial, ns, sa)
		}
		cluster = c
	}
	return &authn.Identity{
		ID:             primaryID,
		Namespace:      ns,
		ServiceAccount: sa,
		Cluster:        cluster,
		Subject:        serial,
	}, nil
}

func aliasList(aliases []spiffeid.TrustDomain) string {
	if len(aliases) == 0 {
		return ""
	}
	s := " or an alias:"
	for _, td := range aliases {
		s += " " + td.Name()
	}
	return s
}
