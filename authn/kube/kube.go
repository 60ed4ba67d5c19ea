// Package kube authenticates Istio agents by their Kubernetes
// service-account token: it asks the cluster's API server (TokenReview) to
// vouch for the token and turns the service account it names into a SPIFFE
// workload identity.
//
// TokenReview, unlike local JWT verification, also refuses tokens whose
// bound object (pod, secret) has been deleted, so it is the authority of
// choice whenever the broker can reach the API server.
package kube

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshca/broker/authn"
)

const (
	// DefaultClusterID is what Istio calls a cluster when nobody named it
	// (ISTIO_META_CLUSTER_ID's default), so agents of a default install
	// send it.
	DefaultClusterID = "Kubernetes"
	// DefaultAudience is the audience Istio agents request for their CA
	// token (third-party-jwt).
	DefaultAudience = "istio-ca"
	// DefaultTimeout bounds one TokenReview; the agent's own deadline is
	// usually longer, and it retries when told the authority is unavailable.
	DefaultTimeout = 5 * time.Second

	// PodNameExtra is the user-info extra key under which the API server
	// reports the pod a bound token belongs to.
	PodNameExtra = "authentication.kubernetes.io/pod-name"

	// maxTokenBytes keeps absurd metadata from being forwarded to the API
	// server; real service-account tokens are around 1 KiB.
	maxTokenBytes = 64 << 10

	// client-go's defaults (5 QPS, burst 10) would throttle a CA under a
	// rollout of a few hundred pods.
	defaultQPS   = 100
	defaultBurst = 200
)

// Reviewer asks one cluster's API server whether a token is good.
type Reviewer interface {
	Review(ctx context.Context, token string, audiences []string) (*authenticationv1.TokenReviewStatus, error)
}

// Clusters finds the reviewer for a cluster other than the broker's own
// (remote clusters in a multi-cluster mesh).
type Clusters interface {
	Reviewer(clusterID string) (Reviewer, bool)
}

// ClusterMap is a fixed set of remote clusters.
type ClusterMap map[string]Reviewer

// Reviewer implements Clusters.
func (m ClusterMap) Reviewer(clusterID string) (Reviewer, bool) {
	r, ok := m[clusterID]
	return r, ok
}

// ClientReviewer reviews tokens with TokenReview through a clientset. The
// clientset's identity needs "create" on tokenreviews.authentication.k8s.io
// (the system:auth-delegator ClusterRole grants it).
type ClientReviewer struct {
	Client kubernetes.Interface
}

// Review implements Reviewer.
func (r ClientReviewer) Review(ctx context.Context, token string, audiences []string) (*authenticationv1.TokenReviewStatus, error) {
	tr, err := r.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	return &tr.Status, nil
}

// Config configures an Authenticator.
type Config struct {
	// ClusterID is the cluster this broker runs in; requests whose
	// clusterid is empty or equal to it are reviewed by the local API
	// server. Default DefaultClusterID.
	ClusterID string
	// Kubeconfig is the path of a kubeconfig for the local cluster; empty
	// means in-cluster configuration. Used only by New.
	Kubeconfig string
	// Audiences are requested in every review; the token must carry at
	// least one. Default [DefaultAudience].
	Audiences []string
	// TrustDomain is the trust domain of the identities issued.
	TrustDomain spiffeid.TrustDomain
	// Timeout bounds one review. Default DefaultTimeout.
	Timeout time.Duration
	// Remote resolves other clusters; nil means this broker serves only
	// its own cluster.
	Remote Clusters
}

// Authenticator implements authn.Authenticator with TokenReview.
type Authenticator struct {
	clusterID   string
	audiences   []string
	trustDomain spiffeid.TrustDomain
	timeout     time.Duration
	local       Reviewer
	remote      Clusters
}

var _ authn.Authenticator = (*Authenticator)(nil)

// New builds an Authenticator whose local reviewer uses cfg.Kubeconfig (or
// the in-cluster configuration).
func New(cfg Config) (*Authenticator, error) {
	rc, err := RESTConfig(cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kube authenticator: clientset: %w", err)
	}
	return NewWithReviewer(cfg, ClientReviewer{Client: cs})
}

// NewWithReviewer builds an Authenticator around an existing local
// reviewer (cfg.Kubeconfig is ignored).
func NewWithReviewer(cfg Config, local Reviewer) (*Authenticator, error) {
	if local == nil {
		return nil, errors.New("kube authenticator: no reviewer for the local cluster")
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("kube authenticator: trust domain is required")
	}
	a := &Authenticator{
		clusterID:   cfg.ClusterID,
		audiences:   slices.Clone(cfg.Audiences),
		trustDomain: cfg.TrustDomain,
		timeout:     cfg.Timeout,
		local:       local,
		remote:      cfg.Remote,
	}
	if a.clusterID == "" {
		a.clusterID = DefaultClusterID
	}
	if len(a.audiences) == 0 {
		a.audiences = []string{DefaultAudience}
	}
	for _, aud := range a.audiences {
		if aud == "" {
			return nil, errors.New("kube authenticator: empty audience")
		}
	}
	if a.timeout <= 0 {
		a.timeout = DefaultTimeout
	}
	return a, nil
}

// RESTConfig loads a kubeconfig file, or the in-cluster configuration when
// path is empty, with rate limits fit for a CA.
func RESTConfig(path string) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	if path == "" {
		rc, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("kube authenticator: in-cluster config (set a kubeconfig when running outside a cluster): %w", err)
		}
	} else {
		rc, err = clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return nil, fmt.Errorf("kube authenticator: kubeconfig %s: %w", path, err)
		}
	}
	if rc.QPS == 0 {
		rc.QPS = defaultQPS
	}
	if rc.Burst == 0 {
		rc.Burst = defaultBurst
	}
	return rc, nil
}

// Name implements authn.Authenticator.
func (a *Authenticator) Name() string { return "kube-tokenreview" }

// ClusterID is the cluster this authenticator treats as local.
func (a *Authenticator) ClusterID() string { return a.clusterID }

// Authenticate implements authn.Authenticator.
func (a *Authenticator) Authenticate(ctx context.Context, req *authn.Request) (*authn.Identity, error) {
	if req == nil || req.BearerToken == "" {
		return nil, fmt.Errorf("%w: no bearer token", authn.ErrNoCredential)
	}
	if len(req.BearerToken) > maxTokenBytes {
		return nil, fmt.Errorf("%w: token review: bearer token is %d bytes, more than a service-account token can be", authn.ErrDenied, len(req.BearerToken))
	}
	cluster := req.ClusterID
	var reviewer Reviewer
	switch {
	case cluster == "" || cluster == a.clusterID:
		cluster, reviewer = a.clusterID, a.local
	case a.remote != nil:
		if r, ok := a.remote.Reviewer(cluster); ok && r != nil {
			reviewer = r
		}
	}
	if reviewer == nil {
		return nil, fmt.Errorf("%w: token review: unknown cluster %q (this broker serves cluster %q)", authn.ErrDenied, cluster, a.clusterID)
	}

	rctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	status, err := reviewer.Review(rctx, req.BearerToken, a.audiences)
	if err != nil {
		return nil, classify(cluster, err)
	}
	return a.identity(cluster, status)
}

// identity checks what the API server said and maps it to a workload.
func (a *Authenticator) identity(cluster string, st *authenticationv1.TokenReviewStatus) (*authn.Identity, error) {
	if st == nil {
		return nil, fmt.Errorf("%w: token review in cluster %q: empty response", authn.ErrUnavailable, cluster)
	}
	if st.Error != "" {
		return nil, fmt.Errorf("%w: token review in cluster %q: %s", authn.ErrDenied, cluster, st.Error)
	}
	if !st.Authenticated {
		return nil, fmt.Errorf("%w: token review in cluster %q: token not authenticated", authn.ErrDenied, cluster)
	}
	// An API server that ignores spec.audiences (or a reviewer that
	// forgot to send them) would accept a token minted for some other
	// service; the status must prove the audience was checked.
	if !intersects(st.Audiences, a.audiences) {
		return nil, fmt.Errorf("%w: token review in cluster %q: token audiences %q do not include any of %q", authn.ErrDenied, cluster, st.Audiences, a.audiences)
	}
	username := st.User.Username
	ns, sa, err := authn.ParseServiceAccountUsername(username)
	if err != nil {
		return nil, fmt.Errorf("token review in cluster %q: %w", cluster, err)
	}
	id, err := authn.WorkloadID(a.trustDomain, ns, sa)
	if err != nil {
		return nil, fmt.Errorf("token review in cluster %q: %w", cluster, err)
	}
	subject := username
	if pods := st.User.Extra[PodNameExtra]; len(pods) == 1 && pods[0] != "" {
		subject += " pod=" + pods[0]
	}
	return &authn.Identity{
		ID:             id,
		Namespace:      ns,
		ServiceAccount: sa,
		Cluster:        cluster,
		Subject:        subject,
	}, nil
}

func intersects(got, want []string) bool {
	for _, g := range got {
		if slices.Contains(want, g) {
			return true
		}
	}
	return false
}

// classify sorts a failed TokenReview call: anything that a retry (or a
// fix on the broker's side) can cure is ErrUnavailable, so the agent keeps
// trying instead of being told its token is bad.
func classify(cluster string, err error) error {
	prefix := fmt.Sprintf("token review in cluster %q", cluster)
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		code := int(status.Status().Code)
		switch {
		case code >= 500, code == http.StatusTooManyRequests, code == http.StatusRequestTimeout,
			apierrors.IsTimeout(err), apierrors.IsServerTimeout(err):
			return fmt.Errorf("%w: %s: %v", authn.ErrUnavailable, prefix, err)
		case code == http.StatusUnauthorized, code == http.StatusForbidden, code == http.StatusNotFound:
			// The broker's own credentials or RBAC are wrong, not the
			// caller's token; an operator fix makes the retry succeed.
			return fmt.Errorf("%w: %s: the broker cannot create TokenReviews (check its credentials and that it is bound to system:auth-delegator): %v", authn.ErrUnavailable, prefix, err)
		case code >= 400:
			return fmt.Errorf("%w: %s: %v", authn.ErrDenied, prefix, err)
		}
	}
	// Timeouts, refused connections, TLS and decoding failures: the token
	// was never judged.
	return fmt.Errorf("%w: %s: %v", authn.ErrUnavailable, prefix, err)
}
