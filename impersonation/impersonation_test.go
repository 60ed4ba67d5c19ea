package impersonation

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshca/broker/authn"
	"github.com/meshca/broker/cluster"
)

// fakeCluster holds pods by namespace/name.
type fakeCluster struct {
	synced bool
	pods   map[string]cluster.Pod
}

func (f *fakeCluster) Synced() bool { return f.synced }
func (f *fakeCluster) Pod(ns, name string) (cluster.Pod, bool) {
	p, ok := f.pods[ns+"/"+name]
	return p, ok
}
func (f *fakeCluster) RunsOn(node, ns, sa string) bool {
	for _, p := range f.pods {
		if p.Node == node && p.Namespace == ns && p.ServiceAccount == sa && !p.Terminated && !p.Deleting {
			return true
		}
	}
	return false
}

type fakeClusters map[string]*fakeCluster

func (f fakeClusters) Get(id string) (Cluster, error) {
	c, ok := f[id]
	if !ok {
		return nil, fmt.Errorf("%w %q", cluster.ErrUnknown, id)
	}
	return c, nil
}

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func ztunnel() *authn.Identity {
	return &authn.Identity{ID: spiffeid.RequireFromString("spiffe://cluster.local/ns/istio-system/sa/ztunnel"),
		Namespace: "istio-system", ServiceAccount: "ztunnel", Cluster: "c1", PodName: "ztunnel-a", PodUID: "z-1", Method: "kube-jwt"}
}

func md(id string) *structpb.Struct {
	s, _ := structpb.NewStruct(map[string]any{MetadataKey: id})
	return s
}

func TestResolve(t *testing.T) {
	pods := func() map[string]cluster.Pod {
		return map[string]cluster.Pod{
			"istio-system/ztunnel-a": {Name: "ztunnel-a", Namespace: "istio-system", UID: "z-1", ServiceAccount: "ztunnel", Node: "node-a"},
			"shop/cart-0":            {Name: "cart-0", Namespace: "shop", UID: "p-1", ServiceAccount: "cart", Node: "node-a"},
			"shop/pay-0":             {Name: "pay-0", Namespace: "shop", UID: "p-2", ServiceAccount: "payments", Node: "node-b"},
			"shop/done-0":            {Name: "done-0", Namespace: "shop", UID: "p-3", ServiceAccount: "batch", Node: "node-a", Terminated: true},
		}
	}
	live := func(mod func(map[string]cluster.Pod)) fakeClusters {
		p := pods()
		if mod != nil {
			mod(p)
		}
		return fakeClusters{"c1": {synced: true, pods: p}}
	}
	cases := []struct {
		name     string
		clusters fakeClusters
		caller   func() *authn.Identity
		want     string
		err      error
		mention  string
	}{
		{"a pod on the node agent's node", live(nil), ztunnel, "spiffe://cluster.local/ns/shop/sa/cart", nil, ""},
		{"an alias trust domain is issued in the primary", live(nil), ztunnel, "spiffe://old.example/ns/shop/sa/cart", nil, ""},
		{"not a node agent", live(nil), func() *authn.Identity {
			c := ztunnel()
			c.Namespace, c.ServiceAccount = "shop", "cart"
			return c
		}, "spiffe://cluster.local/ns/shop/sa/payments", ErrDenied, "only node agents"},
		{"node agent without a pod-bound credential", live(nil), func() *authn.Identity { c := ztunnel(); c.PodName = ""; c.Method = "mtls"; return c },
			"spiffe://cluster.local/ns/shop/sa/cart", ErrDenied, "without a pod-bound token"},
		{"the node agent's pod is gone", live(func(p map[string]cluster.Pod) { delete(p, "istio-system/ztunnel-a") }), ztunnel,
			"spiffe://cluster.local/ns/shop/sa/cart", ErrDenied, "does not exist"},
		{"the node agent's pod was recreated", live(func(p map[string]cluster.Pod) {
			z := p["istio-system/ztunnel-a"]
			z.UID = "z-2"
			p["istio-system/ztunnel-a"] = z
		}), ztunnel,
			"spiffe://cluster.local/ns/shop/sa/cart", ErrDenied, "has UID z-2"},
		{"a workload on another node", live(nil), ztunnel, "spiffe://cluster.local/ns/shop/sa/payments", ErrDenied, "no running pod of shop/payments is on node node-a"},
		{"a workload whose pod terminated", live(nil), ztunnel, "spiffe://cluster.local/ns/shop/sa/batch", ErrDenied, "no running pod"},
		{"a workload that does not exist", live(nil), ztunnel, "spiffe://cluster.local/ns/shop/sa/ghost", ErrDenied, "no running pod"},
		{"another trust domain", live(nil), ztunnel, "spiffe://evil.example/ns/shop/sa/cart", ErrDenied, "not in trust domain"},
		{"not a SPIFFE ID", live(nil), ztunnel, "https://cluster.local/ns/shop/sa/cart", ErrDenied, "not a SPIFFE ID"},
		{"not a workload path", live(nil), ztunnel, "spiffe://cluster.local/admin", ErrDenied, "is not of the form"},
		{"the cluster is not synced", fakeClusters{"c1": {synced: false, pods: pods()}}, ztunnel, "spiffe://cluster.local/ns/shop/sa/cart", ErrUnavailable, "not synced"},
		{"the same name in another cluster does not count", fakeClusters{"c1": {synced: true, pods: map[string]cluster.Pod{"istio-system/ztunnel-a": pods()["istio-system/ztunnel-a"]}}, "c2": {synced: true, pods: pods()}},
			ztunnel, "spiffe://cluster.local/ns/shop/sa/cart", ErrDenied, "no running pod"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(Config{NodeAgents: []NodeAgent{{"istio-system", "ztunnel"}}, TrustDomain: td,
				Aliases: []spiffeid.TrustDomain{spiffeid.RequireTrustDomainFromString("old.example")}, Clusters: tc.clusters})
			if err != nil {
				t.Fatal(err)
			}
			caller := tc.caller()
			got, err := c.Resolve(caller, md(tc.want))
			if tc.err != nil {
				if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.mention) {
					t.Fatalf("err = %v, want %v mentioning %q", err, tc.err, tc.mention)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.ID.String() != "spiffe://cluster.local/ns/shop/sa/cart" || got.NodeAgent != caller || got.NodeName != "node-a" || got.Cluster != "c1" {
				t.Fatalf("resolved %+v", got)
			}
		})
	}
}

func TestNoImpersonationIsTheCaller(t *testing.T) {
	c, _ := New(Config{TrustDomain: td})
	for _, m := range []*structpb.Struct{nil, md(""), func() *structpb.Struct { s, _ := structpb.NewStruct(map[string]any{"CertSigner": "x"}); return s }()} {
		caller := ztunnel()
		got, err := c.Resolve(caller, m)
		if err != nil || got != caller {
			t.Fatalf("Resolve = %v, %v; want the caller", got, err)
		}
	}
	if _, err := c.Resolve(ztunnel(), md("spiffe://cluster.local/ns/shop/sa/cart")); !errors.Is(err, ErrDenied) {
		t.Fatalf("with no node agents configured: %v, want ErrDenied", err)
	}
}
