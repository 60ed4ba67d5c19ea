// Package impersonation decides whether a node agent may have a workload's
// certificate: in Istio's ambient mode ztunnel asks the CA for the
// certificates of the pods on its node, naming each in the request's
// ImpersonatedIdentity metadata. It is granted only to a configured node
// agent, proved by a pod-bound token, for an identity in the mesh's trust
// domain that a live pod on the node agent's own node runs as, in the same
// cluster. Everything is read from the cluster registry's live views;
// nothing is taken from the request but the identity asked for.
package impersonation

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshca/broker/authn"
	"github.com/meshca/broker/cluster"
)

// MetadataKey is the request metadata field naming the identity a node
// agent asks for.
const MetadataKey = "ImpersonatedIdentity"

var (
	// ErrDenied: the impersonation is not allowed (PermissionDenied).
	ErrDenied = errors.New("impersonation not allowed")
	// ErrUnavailable: the cluster's view is not ready to tell (Unavailable).
	ErrUnavailable = errors.New("impersonation cannot be checked yet")
)

// Cluster is what the checks need of one cluster.
type Cluster interface {
	Synced() bool
	Pod(namespace, name string) (cluster.Pod, bool)
	RunsOn(node, namespace, serviceAccount string) bool
}

// Clusters finds a cluster by ID.
type Clusters interface {
	Get(id string) (Cluster, error)
}

// Registry adapts a cluster.Registry.
type Registry struct{ R *cluster.Registry }

// Get implements Clusters.
func (r Registry) Get(id string) (Cluster, error) {
	c, err := r.R.Get(id)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// NodeAgent is a service account allowed to impersonate.
type NodeAgent struct{ Namespace, ServiceAccount string }

// ParseNodeAgent reads "namespace/serviceaccount".
func ParseNodeAgent(s string) (NodeAgent, error) {
	ns, sa, ok := strings.Cut(s, "/")
	if !ok || ns == "" || sa == "" || strings.Contains(sa, "/") {
		return NodeAgent{}, fmt.Errorf("node agent %q is not <namespace>/<service account>", s)
	}
	return NodeAgent{ns, sa}, nil
}

// Config configures a Checker.
type Config struct {
	NodeAgents  []NodeAgent
	TrustDomain spiffeid.TrustDomain
	Aliases     []spiffeid.TrustDomain
	Clusters    Clusters
}

// Checker implements the checks.
type Checker struct{ cfg Config }

// New returns a checker; with no node agents every impersonation is
// refused.
func New(cfg Config) (*Checker, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("impersonation: trust domain is required")
	}
	if len(cfg.NodeAgents) > 0 && cfg.Clusters == nil {
		return nil, errors.New("impersonation: node agents need the cluster registry (Kubernetes authentication)")
	}
	return &Checker{cfg: cfg}, nil
}

// Requested returns the identity the metadata asks for, "" when none.
func Requested(md *structpb.Struct) (string, error) {
	v, ok := md.GetFields()[MetadataKey]
	if !ok {
		return "", nil
	}
	switch k := v.GetKind().(type) {
	case *structpb.Value_NullValue, nil:
		return "", nil
	case *structpb.Value_StringValue:
		return k.StringValue, nil
	}
	return "", fmt.Errorf("%w: metadata %s is not a string", ErrDenied, MetadataKey)
}

// Resolve returns whom the certificate is for: the caller itself, or,
// when the request impersonates and every check passes, the impersonated
// workload (with the caller as its NodeAgent).
func (c *Checker) Resolve(caller *authn.Identity, md *structpb.Struct) (*authn.Identity, error) {
	want, err := Requested(md)
	if err != nil || want == "" {
		return caller, err
	}
	agent := NodeAgent{caller.Namespace, caller.ServiceAccount}
	if !slices.Contains(c.cfg.NodeAgents, agent) {
		return nil, fmt.Errorf("%w: %s asks for %q, but only node agents (%s) may ask for another identity", ErrDenied, caller.ID, want, c.agentList())
	}
	if caller.PodName == "" {
		return nil, fmt.Errorf("%w: node agent %s authenticated without a pod-bound token (method %s), so its node is unknown", ErrDenied, caller.ID, caller.Method)
	}
	cl, err := c.cfg.Clusters.Get(caller.Cluster)
	if err != nil {
		return nil, fmt.Errorf("%w: cluster %q of node agent %s: %v", ErrDenied, caller.Cluster, caller.ID, err)
	}
	if !cl.Synced() {
		return nil, fmt.Errorf("%w: cluster %q's view of pods is not synced yet", ErrUnavailable, caller.Cluster)
	}
	pod, ok := cl.Pod(caller.Namespace, caller.PodName)
	switch {
	case !ok:
		return nil, fmt.Errorf("%w: node agent's pod %s/%s does not exist in cluster %q", ErrDenied, caller.Namespace, caller.PodName, caller.Cluster)
	case caller.PodUID != "" && pod.UID != caller.PodUID:
		return nil, fmt.Errorf("%w: node agent's pod %s/%s has UID %s, its token names %s", ErrDenied, caller.Namespace, caller.PodName, pod.UID, caller.PodUID)
	case pod.Terminated || pod.Deleting:
		return nil, fmt.Errorf("%w: node agent's pod %s/%s is terminating", ErrDenied, caller.Namespace, caller.PodName)
	case pod.Node == "":
		return nil, fmt.Errorf("%w: node agent's pod %s/%s is not on a node", ErrDenied, caller.Namespace, caller.PodName)
	}
	id, err := spiffeid.FromString(want)
	if err != nil {
		return nil, fmt.Errorf("%w: %s %q is not a SPIFFE ID: %v", ErrDenied, MetadataKey, want, err)
	}
	// istiod does not compare the impersonated trust domain; a node agent
	// of this mesh has no business asking for another mesh's identity.
	if td := id.TrustDomain(); td != c.cfg.TrustDomain && !slices.Contains(c.cfg.Aliases, td) {
		return nil, fmt.Errorf("%w: %s is not in trust domain %s", ErrDenied, id, c.cfg.TrustDomain)
	}
	ns, sa, err := authn.ParseWorkloadID(id)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDenied, err)
	}
	if !cl.RunsOn(pod.Node, ns, sa) {
		return nil, fmt.Errorf("%w: no running pod of %s/%s is on node %s (the node of %s's pod %s/%s) in cluster %q", ErrDenied, ns, sa, pod.Node, caller.ID, caller.Namespace, caller.PodName, caller.Cluster)
	}
	primary, err := authn.WorkloadID(c.cfg.TrustDomain, ns, sa)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDenied, err)
	}
	return &authn.Identity{
		ID:             primary,
		Namespace:      ns,
		ServiceAccount: sa,
		NodeName:       pod.Node,
		Cluster:        caller.Cluster,
		Method:         caller.Method + "+impersonation",
		Subject:        "on node " + pod.Node,
		NodeAgent:      caller,
	}, nil
}

func (c *Checker) agentList() string {
	if len(c.cfg.NodeAgents) == 0 {
		return "none configured"
	}
	var s []string
	for _, a := range c.cfg.NodeAgents {
		s = append(s, a.Namespace+"/"+a.ServiceAccount)
	}
	return strings.Join(s, ", ")
}
