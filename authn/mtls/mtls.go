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
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/broker/authn"
	"github.com/meshca/broker/cluster"
	"github.com/meshca/broker/verify"
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
	// Clusters is the live view every renewal is checked against
	// (required: without one nothing renews).
	Clusters Clusters
	// OffCluster are the workloads that run outside every cluster (VMs)
	// and renew with a fresh lifetime; the others only rotate their key
	// within the presented certificate's lifetime.
	OffCluster []Workload
	// IssuanceSlack is how much later than its NotBefore a certificate
	// may have been issued: the policy's backdate plus what verification
	// lets a PKI stray (verify.Slack). Objects created more than this
	// after a certificate's NotBefore are newer than the certificate.
	IssuanceSlack time.Duration
	// IssuedBy, if set, must accept the certificate directly above the
	// leaf in the verified chain: only what the broker's own issuing CAs
	// signed renews, not everything else the trust anchor signed.
	IssuedBy func(issuer *x509.Certificate) bool
}

// Workload names off-cluster workloads: a namespace and a service
// account, or "*" for every service account of the namespace.
type Workload struct{ Namespace, ServiceAccount string }

// ParseWorkload reads "namespace/serviceaccount" or "namespace/*".
func ParseWorkload(s string) (Workload, error) {
	ns, sa, ok := strings.Cut(s, "/")
	if !ok || ns == "" || sa == "" || strings.Contains(sa, "/") {
		return Workload{}, fmt.Errorf("%q is not <namespace>/<service account> or <namespace>/*", s)
	}
	// Validated as the SPIFFE ID they name would be; "*" stands for any
	// valid service-account name.
	name := sa
	if sa == "*" {
		name = "any"
	}
	if _, err := authn.WorkloadID(spiffeid.RequireTrustDomainFromString("cluster.local"), ns, name); err != nil {
		return Workload{}, fmt.Errorf("%q does not name a valid namespace and service account", s)
	}
	return Workload{ns, sa}, nil
}

func (w Workload) matches(ns, sa string) bool {
	return w.Namespace == ns && (w.ServiceAccount == "*" || w.ServiceAccount == sa)
}

// Authenticator implements authn.Authenticator for client certificates.
type Authenticator struct {
	primary    spiffeid.TrustDomain
	aliases    []spiffeid.TrustDomain
	anchors    func(ctx context.Context) ([]*x509.Certificate, error)
	now        func() time.Time
	clusters   Clusters
	offCluster []Workload
	slack      time.Duration
	issued     func(*x509.Certificate) bool
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
	if cfg.Clusters == nil {
		return nil, errors.New("mtls authenticator: renewal is checked against the live cluster view, and none is configured (Kubernetes authentication is off)")
	}
	if cfg.IssuanceSlack < 0 {
		return nil, errors.New("mtls authenticator: negative issuance slack")
	}
	a := &Authenticator{primary: cfg.TrustDomain, anchors: cfg.Anchors, now: cfg.Now, clusters: cfg.Clusters,
		offCluster: slices.Clone(cfg.OffCluster), slack: cfg.IssuanceSlack, issued: cfg.IssuedBy}
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
	// What made the identity valid must still hold, in a live view of a
	// cluster: the certificate says nothing else the broker could trust.
	offCluster := slices.ContainsFunc(a.offCluster, func(w Workload) bool { return w.matches(ns, sa) })
	clusterID, err := a.backing(ns, sa, leaf.NotBefore.Add(a.slack), offCluster)
	if err != nil {
		return nil, fmt.Errorf("client certificate %s: %w", serial, err)
	}
	ident := &authn.Identity{
		ID:             primaryID,
		Namespace:      ns,
		ServiceAccount: sa,
		Cluster:        clusterID,
		Subject:        serial,
	}
	if !offCluster {
		// Key rotation only: what a token granted ends when its last
		// certificate does, however often that is renewed. The margin
		// keeps a PKI that rounds NotAfter up (verify.Slack) within it.
		ident.NotAfter = leaf.NotAfter.Add(-verify.Slack)
	}
	return ident, nil
}

// backing returns the cluster whose live view still backs a certificate
// for ns/sa issued no later than issuedBy: the service account exists and
// is not newer than the certificate (a recreated one is another account)
// and, for a Kubernetes workload, a pod of it that is neither terminated
// nor being deleted, not newer than the certificate and not older than
// the service account (so a recreated account is seen whenever it
// happened, not only outside the issuance slack). A cluster
// whose view is not current cannot back anything; when no current view
// backs it but some view is not current, the answer is Unavailable
// (retrying may help), never a guess.
func (a *Authenticator) backing(ns, sa string, issuedBy time.Time, offCluster bool) (string, error) {
	var stale bool
	var why []string
	for _, c := range a.clusters.All() {
		if !c.Synced() {
			stale = true
			continue
		}
		acct, ok := c.ServiceAccount(ns, sa)
		switch {
		case !ok:
			why = append(why, "the service account does not exist")
			continue
		case acct.Created.After(issuedBy):
			why = append(why, "the service account was created after the certificate was issued (deleted and recreated)")
			continue
		case offCluster:
			return c.Name(), nil
		}
		// A pod older than its service account ran as an earlier
		// account of that name: admission wants the account to exist.
		if slices.ContainsFunc(c.PodsOf(ns, sa), func(p cluster.Pod) bool {
			return !p.Terminated && !p.Deleting && !p.Created.After(issuedBy) && !p.Created.Before(acct.Created)
		}) {
			return c.Name(), nil
		}
		why = append(why, "no running pod of it is older than the certificate and newer than the service account")
	}
	if stale {
		return "", fmt.Errorf("%w: cannot tell whether service account %s/%s still backs the certificate (a cluster's view is not current)", authn.ErrUnavailable, ns, sa)
	}
	if len(why) == 0 {
		why = append(why, "no cluster to check it against")
	}
	slices.Sort(why)
	return "", fmt.Errorf("%w: service account %s/%s no longer backs the certificate: %s", authn.ErrDenied, ns, sa, strings.Join(slices.Compact(why), "; "))
}

// Clusters is the live view of every cluster served.
type Clusters interface {
	All() []Cluster
}

// Cluster is what renewal checks need of one cluster.
type Cluster interface {
	Name() string
	Synced() bool
	ServiceAccount(namespace, name string) (cluster.ServiceAccount, bool)
	PodsOf(namespace, serviceAccount string) []cluster.Pod
}

// Registry adapts a cluster.Registry.
type Registry struct{ R *cluster.Registry }

// All implements Clusters.
func (r Registry) All() []Cluster {
	all := r.R.All()
	out := make([]Cluster, len(all))
	for i, c := range all {
		out[i] = view{c}
	}
	return out
}

type view struct{ *cluster.Cluster }

func (v view) Name() string { return v.ID }

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
