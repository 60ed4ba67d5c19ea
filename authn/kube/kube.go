// Package kube authenticates Istio agents by their Kubernetes
// service-account token, checked against the cluster the agent says it is
// in (its clusterid), and turns the service account into a SPIFFE
// workload identity.
//
// Two ways of checking, per cluster:
//   - local (the default): the token's signature is verified against the
//     cluster's own issuer keys, then what it is bound to is looked up in
//     the broker's live caches of that cluster: the service account with
//     the token's UID and, for a pod-bound token, the pod with the token's
//     UID (on the token's node, where it names one). A deleted or
//     recreated object is refused as soon as its watch event arrives
//     (well under the API server's own 10 s TokenReview cache), and so is
//     the token of a pod that has finished or is being deleted (the API
//     server accepts those until 60 s after the deletion timestamp; a pod
//     on its way out needs no new certificate). Whenever
//     local checking cannot decide (caches not synced, issuer keys not
//     fetched, a token bound to a secret or only to a node, a signing key
//     the broker has not seen yet) the token goes to TokenReview instead.
//   - tokenreview: every token is sent to the cluster's API server.
//
// No token reaches TokenReview unless it is plausible: a compact JWS whose
// unverified claims name the cluster's issuer (once known), an accepted
// audience and an expiry not passed. Tokens signed with a key the broker
// has not seen go there only at a bounded rate per cluster, so that
// nobody who can reach the port turns made-up key IDs into API server
// load.
package kube

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"
	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshca/broker/authn"
	"github.com/meshca/broker/authn/jwks"
	"github.com/meshca/broker/cluster"
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

	// DefaultUnknownKeyRate and DefaultUnknownKeyBurst bound, per
	// cluster, the tokens sent to TokenReview because their signing key is
	// not among the cluster's keys the broker holds. After a real key
	// rotation the broker re-fetches the keys within seconds, so only the
	// first tokens of the new key need the fallback; a flood of made-up
	// key IDs is answered Unavailable instead of becoming reviews.
	DefaultUnknownKeyRate  = 20
	DefaultUnknownKeyBurst = 100
)

// Reviewer asks one cluster's API server whether a token is good.
type Reviewer interface {
	Review(ctx context.Context, token string, audiences []string) (*authenticationv1.TokenReviewStatus, error)
}

// Cluster is what the authenticator needs of one cluster (a
// *cluster.Cluster, or a fake in tests).
type Cluster interface {
	Reviewer
	// VerifyToken verifies the token locally; cluster.ErrNotReady when
	// it cannot yet.
	VerifyToken(ctx context.Context, token string) (*jwks.Claims, error)
	// Synced reports whether the object caches are current.
	Synced() bool
	// Issuer is the cluster's service-account issuer, "" while unknown.
	Issuer() string
	ServiceAccountUID(namespace, name string) (string, bool)
	Pod(namespace, name string) (cluster.Pod, bool)
}

// Clusters finds the cluster an agent's clusterid names: empty is the
// broker's own; cluster.ErrUnknown when there is none.
type Clusters interface {
	Get(clusterID string) (Cluster, string, error)
}

// Registry adapts a cluster.Registry.
type Registry struct{ R *cluster.Registry }

// Get implements Clusters.
func (r Registry) Get(id string) (Cluster, string, error) {
	c, err := r.R.Get(id)
	if err != nil {
		return nil, "", err
	}
	return c, c.ID, nil
}

// ClusterMap is a fixed set of remote clusters known only by a Reviewer
// (TokenReview only).
type ClusterMap map[string]Reviewer

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

// Verification modes.
const (
	// Local verification with live bound-object checks, TokenReview when
	// that cannot decide. The default.
	Local = "local"
	// TokenReview for every token.
	TokenReview = "tokenreview"
)

// Config configures an Authenticator.
type Config struct {
	// ClusterID is the cluster this broker runs in (default
	// DefaultClusterID); used by New and NewWithReviewer, which build a
	// fixed set of clusters.
	ClusterID string
	// Kubeconfig is the path of a kubeconfig for the local cluster; empty
	// means in-cluster configuration. Used only by New.
	Kubeconfig string
	// Clusters, for NewForClusters.
	Clusters Clusters
	// Verification is Local (default) or TokenReview.
	Verification string
	// Audiences are requested in every review; the token must carry at
	// least one. Default [DefaultAudience].
	Audiences []string
	// TrustDomain is the trust domain of the identities issued.
	TrustDomain spiffeid.TrustDomain
	// Timeout bounds one review. Default DefaultTimeout.
	Timeout time.Duration
	// Remote resolves other clusters for NewWithReviewer.
	Remote ClusterMap
	// UnknownKeyRate (per second) and UnknownKeyBurst bound, per cluster,
	// the TokenReviews of tokens signed with a key the broker has not
	// seen. Defaults DefaultUnknownKeyRate and DefaultUnknownKeyBurst.
	UnknownKeyRate  float64
	UnknownKeyBurst int
	// Now is the clock for the plausibility check (tests).
	Now func() time.Time
}

// Authenticator implements authn.Authenticator.
type Authenticator struct {
	audiences   []string
	trustDomain spiffeid.TrustDomain
	timeout     time.Duration
	clusters    Clusters
	mode        string
	localID     string
	now         func() time.Time

	unknownKeyRate  rate.Limit
	unknownKeyBurst int
	// unknownKey holds a *rate.Limiter per cluster ID; clusters are few
	// and known (Get succeeded), so the map stays small.
	unknownKey sync.Map
}

var _ authn.Authenticator = (*Authenticator)(nil)

// New builds a TokenReview-only authenticator for the cluster of
// cfg.Kubeconfig (or the in-cluster configuration).
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

// NewWithReviewer builds a TokenReview-only authenticator around a local
// reviewer and cfg.Remote.
func NewWithReviewer(cfg Config, local Reviewer) (*Authenticator, error) {
	if local == nil {
		return nil, errors.New("kube authenticator: no reviewer for the local cluster")
	}
	if cfg.ClusterID == "" {
		cfg.ClusterID = DefaultClusterID
	}
	cfg.Clusters = reviewers{local: cfg.ClusterID, reviewers: map[string]Reviewer{cfg.ClusterID: local}}
	for id, r := range cfg.Remote {
		cfg.Clusters.(reviewers).reviewers[id] = r
	}
	cfg.Verification = TokenReview
	return NewForClusters(cfg)
}

// NewForClusters builds an authenticator over cfg.Clusters.
func NewForClusters(cfg Config) (*Authenticator, error) {
	if cfg.Clusters == nil {
		return nil, errors.New("kube authenticator: no clusters")
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("kube authenticator: trust domain is required")
	}
	a := &Authenticator{
		audiences:   slices.Clone(cfg.Audiences),
		trustDomain: cfg.TrustDomain,
		timeout:     cfg.Timeout,
		clusters:    cfg.Clusters,
		mode:        cfg.Verification,
		localID:     cfg.ClusterID,
		now:         cfg.Now,

		unknownKeyRate:  rate.Limit(cfg.UnknownKeyRate),
		unknownKeyBurst: cfg.UnknownKeyBurst,
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.unknownKeyRate <= 0 {
		a.unknownKeyRate = DefaultUnknownKeyRate
	}
	if a.unknownKeyBurst <= 0 {
		a.unknownKeyBurst = DefaultUnknownKeyBurst
	}
	switch a.mode {
	case "":
		a.mode = Local
	case Local, TokenReview:
	default:
		return nil, fmt.Errorf("kube authenticator: verification %q is neither %q nor %q", a.mode, Local, TokenReview)
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

// reviewers is a fixed set of TokenReview-only clusters.
type reviewers struct {
	local     string
	reviewers map[string]Reviewer
}

func (r reviewers) Get(id string) (Cluster, string, error) {
	if id == "" {
		id = r.local
	}
	rv, ok := r.reviewers[id]
	if !ok || rv == nil {
		// Only the requested ID: the message reaches unauthenticated
		// callers, who must not learn which clusters the broker serves.
		return nil, "", fmt.Errorf("%w %q", cluster.ErrUnknown, id)
	}
	return reviewOnly{rv}, id, nil
}

// reviewOnly is a cluster known only by its TokenReview endpoint.
type reviewOnly struct{ Reviewer }

func (reviewOnly) VerifyToken(context.Context, string) (*jwks.Claims, error) {
	return nil, cluster.ErrNotReady
}
func (reviewOnly) Synced() bool                                    { return false }
func (reviewOnly) Issuer() string                                  { return "" }
func (reviewOnly) ServiceAccountUID(string, string) (string, bool) { return "", false }
func (reviewOnly) Pod(string, string) (cluster.Pod, bool)          { return cluster.Pod{}, false }

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
func (a *Authenticator) Name() string {
	if a.mode == TokenReview {
		return "kube-tokenreview"
	}
	return "kube-jwt"
}

// ClusterID is the cluster this authenticator treats as local (for the
// fixed sets New and NewWithReviewer build).
func (a *Authenticator) ClusterID() string { return a.localID }

// Authenticate implements authn.Authenticator.
func (a *Authenticator) Authenticate(ctx context.Context, req *authn.Request) (*authn.Identity, error) {
	if req == nil || req.BearerToken == "" {
		return nil, fmt.Errorf("%w: no bearer token", authn.ErrNoCredential)
	}
	if len(req.BearerToken) > maxTokenBytes {
		return nil, fmt.Errorf("%w: bearer token is %d bytes, more than a service-account token can be", authn.ErrDenied, len(req.BearerToken))
	}
	// The cluster first: every check below is that cluster's.
	c, clusterID, err := a.clusters.Get(req.ClusterID)
	if err != nil {
		if errors.Is(err, cluster.ErrUnknown) {
			// Not a cluster this authenticator serves: another (a jwks
			// entry for that cluster) may claim it; if none does, the
			// chain refuses it.
			return nil, fmt.Errorf("%w: %v", authn.ErrNoCredential, err)
		}
		return nil, fmt.Errorf("%w: cluster %q: %v", authn.ErrUnavailable, req.ClusterID, err)
	}
	unknownKey := false
	if a.mode == Local {
		id, decided, err := a.verifyLocally(ctx, c, clusterID, req.BearerToken)
		if decided {
			return id, err
		}
		unknownKey = errors.Is(err, jwks.ErrUnknownKey)
	}
	// Only plausible tokens, and of those with unknown keys only a few,
	// cost the API server a review.
	if err := a.plausible(req.BearerToken, c.Issuer()); err != nil {
		return nil, fmt.Errorf("%w: token in cluster %q: %v", authn.ErrDenied, clusterID, err)
	}
	if unknownKey && !a.unknownKeyLimiter(clusterID).Allow() {
		return nil, fmt.Errorf("%w: token in cluster %q is signed with a key the broker has not seen, and more such tokens than %v/s arrived; retry once the cluster's keys are re-fetched", authn.ErrUnavailable, clusterID, float64(a.unknownKeyRate))
	}
	id, err := a.review(ctx, c, clusterID, req.BearerToken)
	if err != nil {
		return nil, err
	}
	// A reviewed token of a pod the live view knows to be on its way out
	// is refused as the local check would (the API server accepts it
	// until 60 s after the deletion timestamp).
	if id.PodName != "" && c.Synced() {
		if pod, ok := c.Pod(id.Namespace, id.PodName); ok && pod.UID == id.PodUID {
			if err := podGone(clusterID, pod); err != nil {
				return nil, err
			}
		}
	}
	return id, nil
}

func (a *Authenticator) unknownKeyLimiter(clusterID string) *rate.Limiter {
	if l, ok := a.unknownKey.Load(clusterID); ok {
		return l.(*rate.Limiter)
	}
	l, _ := a.unknownKey.LoadOrStore(clusterID, rate.NewLimiter(a.unknownKeyRate, a.unknownKeyBurst))
	return l.(*rate.Limiter)
}

// plausible checks, without verifying the signature, that the token could
// be one this authenticator accepts: a compact JWS with one signature in an
// algorithm Kubernetes signs with, naming the cluster's issuer (when
// known), one of the accepted audiences, and an expiry not yet passed
// (with the usual leeway). Tokens without expiry or audience (legacy
// secret-based tokens) are not accepted: Istio's agents send projected
// tokens for the istio-ca audience.
func (a *Authenticator) plausible(token, issuer string) error {
	tok, err := jwt.ParseSigned(token, jwks.DefaultAlgorithms)
	if err != nil {
		return fmt.Errorf("not a compact JWS signed with an allowed algorithm: %v", err)
	}
	if len(tok.Headers) != 1 {
		return fmt.Errorf("expected one signature, got %d", len(tok.Headers))
	}
	var cl jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&cl); err != nil {
		return fmt.Errorf("claims are not a JSON object: %v", err)
	}
	switch {
	case issuer != "" && cl.Issuer != issuer:
		return fmt.Errorf("issuer %q, want %q", cl.Issuer, issuer)
	case !intersects(cl.Audience, a.audiences):
		return fmt.Errorf("token audiences %q do not include any of %q", []string(cl.Audience), a.audiences)
	case cl.Expiry == nil:
		return errors.New("token has no expiry (legacy service-account token?)")
	case a.now().After(cl.Expiry.Time().Add(jwks.DefaultLeeway)):
		return fmt.Errorf("token expired at %s", cl.Expiry.Time().UTC().Format(time.RFC3339))
	}
	return nil
}

// verifyLocally checks the token against the cluster's keys and live
// objects. decided is false when only TokenReview can tell.
func (a *Authenticator) verifyLocally(ctx context.Context, c Cluster, clusterID, token string) (id *authn.Identity, decided bool, err error) {
	if !c.Synced() {
		return nil, false, nil
	}
	claims, err := c.VerifyToken(ctx, token)
	switch {
	case errors.Is(err, cluster.ErrNotReady), errors.Is(err, authn.ErrUnavailable):
		return nil, false, nil
	case err != nil && errors.Is(err, jwks.ErrUnknownKey):
		// A key the cluster started signing with after our last fetch
		// (the fetch is rate-limited); the API server knows. The caller
		// bounds how many of these it asks about.
		return nil, false, err
	case err != nil:
		return nil, true, fmt.Errorf("token in cluster %q: %w", clusterID, err)
	case !claims.Bound || claims.SecretName != "":
		// Legacy or secret-bound tokens: what they are bound to is not
		// cached here.
		return nil, false, nil
	case claims.PodName == "" && claims.NodeName != "":
		// Bound to a node only: the API server checks that node, which
		// is not cached here.
		return nil, false, nil
	}
	if err := checkBound(c, clusterID, claims); err != nil {
		return nil, true, err
	}
	id, err = claims.Identity(a.trustDomain, clusterID)
	if id != nil {
		id.Method = "kube-jwt"
	}
	return id, true, err
}

// checkBound refuses a token whose service account or pod no longer
// exists, or exists under another UID (deleted and recreated).
func checkBound(c Cluster, clusterID string, cl *jwks.Claims) error {
	uid, ok := c.ServiceAccountUID(cl.Namespace, cl.ServiceAccount)
	switch {
	case !ok:
		return fmt.Errorf("%w: token in cluster %q: service account %s/%s no longer exists", authn.ErrDenied, clusterID, cl.Namespace, cl.ServiceAccount)
	case uid != cl.ServiceAccountUID:
		return fmt.Errorf("%w: token in cluster %q: service account %s/%s has UID %s, the token was issued for UID %s (deleted and recreated)", authn.ErrDenied, clusterID, cl.Namespace, cl.ServiceAccount, uid, cl.ServiceAccountUID)
	}
	if cl.PodName == "" {
		return nil
	}
	pod, ok := c.Pod(cl.Namespace, cl.PodName)
	switch {
	case !ok:
		return fmt.Errorf("%w: token in cluster %q: pod %s/%s it is bound to no longer exists", authn.ErrDenied, clusterID, cl.Namespace, cl.PodName)
	case pod.UID != cl.PodUID:
		return fmt.Errorf("%w: token in cluster %q: pod %s/%s has UID %s, the token is bound to UID %s (deleted and recreated)", authn.ErrDenied, clusterID, cl.Namespace, cl.PodName, pod.UID, cl.PodUID)
	case pod.ServiceAccount != "" && pod.ServiceAccount != cl.ServiceAccount:
		return fmt.Errorf("%w: token in cluster %q: pod %s/%s runs as %s, not %s", authn.ErrDenied, clusterID, cl.Namespace, cl.PodName, pod.ServiceAccount, cl.ServiceAccount)
	case cl.NodeName != "" && pod.Node != "" && pod.Node != cl.NodeName:
		return fmt.Errorf("%w: token in cluster %q: pod %s/%s runs on node %s, the token names node %s", authn.ErrDenied, clusterID, cl.Namespace, cl.PodName, pod.Node, cl.NodeName)
	}
	return podGone(clusterID, pod)
}

// podGone refuses the token of a pod that has finished or is being
// deleted: its workload has stopped or is stopping, and what it already
// holds lasts its drain. The API server's TokenReview would accept it
// until 60 s after the deletion timestamp, or for as long as a finished
// pod's object is kept; impersonation and renewal refuse such pods too.
func podGone(clusterID string, pod cluster.Pod) error {
	switch {
	case pod.Deleting:
		return fmt.Errorf("%w: token in cluster %q: pod %s/%s it is bound to is being deleted", authn.ErrDenied, clusterID, pod.Namespace, pod.Name)
	case pod.Terminated:
		return fmt.Errorf("%w: token in cluster %q: pod %s/%s it is bound to has finished", authn.ErrDenied, clusterID, pod.Namespace, pod.Name)
	}
	return nil
}

// review asks the cluster's API server.
func (a *Authenticator) review(ctx context.Context, c Cluster, clusterID, token string) (*authn.Identity, error) {
	rctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	status, err := c.Review(rctx, token, a.audiences)
	if err != nil {
		return nil, classify(clusterID, err)
	}
	id, err := a.identity(clusterID, status)
	if id != nil {
		id.Method = "kube-tokenreview"
	}
	return id, err
}

// User-info extra keys under which the API server reports what a bound
// token is bound to.
const (
	podUIDExtra   = "authentication.kubernetes.io/pod-uid"
	nodeNameExtra = "authentication.kubernetes.io/node-name"
)

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
	one := func(key string) string {
		if v := st.User.Extra[key]; len(v) == 1 {
			return v[0]
		}
		return ""
	}
	subject := username
	pod := one(PodNameExtra)
	if pod != "" {
		subject += " pod=" + pod
	}
	return &authn.Identity{
		ID:                id,
		Namespace:         ns,
		ServiceAccount:    sa,
		ServiceAccountUID: st.User.UID,
		PodName:           pod,
		PodUID:            one(podUIDExtra),
		NodeName:          one(nodeNameExtra),
		Cluster:           cluster,
		Subject:           subject,
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
