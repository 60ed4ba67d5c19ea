// Package authn decides who is calling: it turns what arrived with a
// CreateCertificate request (a bearer token, the clusterid header, a client
// certificate) into a workload identity, or refuses. Each way of proving an
// identity is an Authenticator in its own subpackage; Chain tries them in
// order and fails closed: the first authenticator that claims the
// credential (returns anything but ErrNoCredential) decides, whether it
// accepts, refuses, or cannot ask its authority, so each bearer token is
// judged by exactly one verifier.
package authn

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Request is what the transport knows about a caller.
type Request struct {
	// BearerToken is the token from the "authorization: Bearer" metadata,
	// empty if there was none.
	BearerToken string
	// ClusterID is the "clusterid" metadata the Istio agent sends
	// (ISTIO_META_CLUSTER_ID); empty means the broker's own cluster.
	ClusterID string
	// PeerCertificates is the client certificate chain presented in the TLS
	// handshake, leaf first, not yet verified.
	PeerCertificates []*x509.Certificate
}

// Identity is an authenticated workload: a Kubernetes service account in a
// trust domain.
type Identity struct {
	// ID is spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
	ID             spiffeid.ID
	Namespace      string
	ServiceAccount string
	// ServiceAccountUID, and the pod (name, UID) and node a bound token
	// names, when the credential says them.
	ServiceAccountUID string
	PodName, PodUID   string
	NodeName          string
	// Cluster is the cluster whose authority vouched for the caller.
	Cluster string
	// Method names the authenticator that accepted the caller, for audit.
	Method string
	// Subject is the credential's own subject (token sub, certificate
	// serial), for audit.
	Subject string
	// NodeAgent is the authenticated caller when this identity was granted
	// to it by impersonation (ambient: ztunnel for a pod on its node).
	NodeAgent *Identity
	// NotAfter, when set, is the latest NotAfter a certificate issued on
	// this credential may have: a renewal by certificate rotates the key
	// within the presented certificate's lifetime and never extends it.
	NotAfter time.Time
}

// Authenticator proves a caller's identity one way.
type Authenticator interface {
	// Name identifies the method in logs and metrics.
	Name() string
	// Authenticate returns the caller's identity. It returns an error
	// wrapping ErrNoCredential when the request carries nothing this
	// authenticator understands, ErrDenied when the credential is not
	// good, and ErrUnavailable when the authority that must vouch for it
	// could not be asked.
	Authenticate(ctx context.Context, req *Request) (*Identity, error)
}

var (
	// ErrNoCredential: the request has no credential of this kind.
	ErrNoCredential = errors.New("no credential")
	// ErrDenied: the credential was checked and refused.
	ErrDenied = errors.New("authentication failed")
	// ErrUnavailable: the authority could not be asked; try again.
	ErrUnavailable = errors.New("authentication authority unavailable")
)

// Chain tries authenticators in order and fails closed: the first
// authenticator that claims the credential decides. An authenticator that
// returns ErrNoCredential (nothing it understands, or a token for a
// cluster it does not serve) passes the request on; the first one that
// returns anything else ends the chain with its answer: its identity, its
// refusal (ErrDenied), or ErrUnavailable. ErrUnavailable ends the chain
// too, so a credential the authority meant to judge it could not be asked
// about is never handed to a later, weaker authenticator: each bearer token
// goes to exactly one verifier, and the caller retries. When nobody claims
// a credential that was presented the result is ErrDenied with each
// authenticator's reason.
type Chain []Authenticator

// Name implements Authenticator.
func (c Chain) Name() string { return "chain" }

// Authenticate implements Authenticator.
func (c Chain) Authenticate(ctx context.Context, req *Request) (*Identity, error) {
	var unclaimed []string
	for _, a := range c {
		id, err := a.Authenticate(ctx, req)
		switch {
		case err == nil && id != nil:
			if id.Method == "" {
				id.Method = a.Name()
			}
			return id, nil
		case err == nil:
			return nil, fmt.Errorf("%s: %w: authenticator returned no identity", a.Name(), ErrDenied)
		case errors.Is(err, ErrNoCredential):
			unclaimed = append(unclaimed, fmt.Sprintf("%s: %v", a.Name(), err))
			continue
		}
		kind := ErrDenied
		if errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrDenied) {
			kind = ErrUnavailable
		}
		return nil, &chainError{kind: kind, msg: fmt.Sprintf("%s: %v", a.Name(), err)}
	}
	if req == nil || (req.BearerToken == "" && len(req.PeerCertificates) == 0) || len(unclaimed) == 0 {
		return nil, fmt.Errorf("%w: no credential presented (expected an \"authorization: Bearer <service-account token>\" header or a client certificate)", ErrDenied)
	}
	return nil, &chainError{kind: ErrDenied, msg: "no authenticator accepts this credential: " + strings.Join(unclaimed, "; ")}
}

// chainError carries the kind for errors.Is and, as its message, only the
// authenticators' own reasons, which already say what failed.
type chainError struct {
	kind error
	msg  string
}

func (e *chainError) Error() string { return e.msg }
func (e *chainError) Unwrap() error { return e.kind }

// WorkloadID builds the SPIFFE ID of a service account in a trust domain,
// refusing namespace or service-account names that are not valid
// Kubernetes names (so no path trickery can reach the ID).
func WorkloadID(td spiffeid.TrustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	if !validDNSLabel(namespace) {
		return spiffeid.ID{}, fmt.Errorf("%w: namespace %q is not a valid Kubernetes namespace name", ErrDenied, namespace)
	}
	if !validDNSSubdomain(serviceAccount) {
		return spiffeid.ID{}, fmt.Errorf("%w: service account %q is not a valid Kubernetes name", ErrDenied, serviceAccount)
	}
	return spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
}

// ParseServiceAccountUsername splits "system:serviceaccount:<ns>:<sa>", the
// username Kubernetes gives a service account in TokenReview and the sub
// claim of its tokens.
func ParseServiceAccountUsername(username string) (namespace, serviceAccount string, err error) {
	const prefix = "system:serviceaccount:"
	rest, ok := strings.CutPrefix(username, prefix)
	if !ok {
		return "", "", fmt.Errorf("%w: %q is not a service account", ErrDenied, username)
	}
	ns, sa, ok := strings.Cut(rest, ":")
	if !ok || ns == "" || sa == "" || strings.Contains(sa, ":") {
		return "", "", fmt.Errorf("%w: malformed service account username %q", ErrDenied, username)
	}
	return ns, sa, nil
}

// ParseWorkloadID is the inverse of WorkloadID for a SPIFFE ID in one of
// the accepted trust domains: it returns the namespace and service account.
func ParseWorkloadID(id spiffeid.ID) (namespace, serviceAccount string, err error) {
	segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(segs) != 4 || segs[0] != "ns" || segs[2] != "sa" {
		return "", "", fmt.Errorf("%w: %s is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>", ErrDenied, id)
	}
	if !validDNSLabel(segs[1]) || !validDNSSubdomain(segs[3]) {
		return "", "", fmt.Errorf("%w: %s names an invalid namespace or service account", ErrDenied, id)
	}
	return segs[1], segs[3], nil
}

// Kubernetes' own validation, so the broker accepts exactly the names the
// API server can create.
func validDNSLabel(s string) bool     { return len(validation.IsDNS1123Label(s)) == 0 }
func validDNSSubdomain(s string) bool { return len(validation.IsDNS1123Subdomain(s)) == 0 }
