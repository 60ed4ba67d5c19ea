package mtls

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/broker/authn"
	"github.com/meshca/broker/cluster"
)

var (
	primary = spiffeid.RequireTrustDomainFromString("cluster.local")
	alias   = spiffeid.RequireTrustDomainFromString("old.example")
	now     = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	serial  int64
)

type issuer struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func create(t *testing.T, tmpl *x509.Certificate, parent *issuer, key crypto.Signer) *x509.Certificate {
	t.Helper()
	serial++
	tmpl.SerialNumber = big.NewInt(0xabc000 + serial)
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = now.Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = now.Add(time.Hour)
	}
	p, pk := tmpl, key
	if parent != nil {
		p, pk = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p, key.Public(), pk)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newCA(t *testing.T, name string, parent *issuer) *issuer {
	t.Helper()
	key := newKey(t)
	cert := create(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}, parent, key)
	return &issuer{cert: cert, key: key}
}

type leafOpt func(*x509.Certificate)

func uris(s ...string) leafOpt {
	return func(c *x509.Certificate) {
		c.URIs = nil
		for _, u := range s {
			parsed, err := url.Parse(u)
			if err != nil {
				panic(err)
			}
			c.URIs = append(c.URIs, parsed)
		}
	}
}

func newLeaf(t *testing.T, ca *issuer, opts ...leafOpt) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	uris("spiffe://cluster.local/ns/team-a/sa/sa1")(tmpl)
	for _, o := range opts {
		o(tmpl)
	}
	return create(t, tmpl, ca, newKey(t))
}

func TestAuthenticate(t *testing.T) {
	root := newCA(t, "root", nil)
	inter := newCA(t, "intermediate", root)
	other := newCA(t, "other root", nil)

	tests := []struct {
		name     string
		chain    []*x509.Certificate
		wantKind error
		wantMsg  string
		wantID   string
	}{
		{name: "no certificate", wantKind: authn.ErrNoCredential},
		{name: "leaf from root", chain: []*x509.Certificate{newLeaf(t, root)}, wantID: "spiffe://cluster.local/ns/team-a/sa/sa1"},
		{name: "leaf via intermediate", chain: []*x509.Certificate{newLeaf(t, inter), inter.cert}, wantID: "spiffe://cluster.local/ns/team-a/sa/sa1"},
		{name: "leaf with root appended", chain: []*x509.Certificate{newLeaf(t, inter), inter.cert, root.cert}, wantID: "spiffe://cluster.local/ns/team-a/sa/sa1"},
		{name: "missing intermediate", chain: []*x509.Certificate{newLeaf(t, inter)}, wantKind: authn.ErrDenied, wantMsg: "unknown authority"},
		{name: "wrong CA", chain: []*x509.Certificate{newLeaf(t, other)}, wantKind: authn.ErrDenied, wantMsg: "unknown authority"},
		{name: "wrong CA presenting its root", chain: []*x509.Certificate{newLeaf(t, other), other.cert}, wantKind: authn.ErrDenied, wantMsg: "unknown authority"},
		{name: "expired", chain: []*x509.Certificate{newLeaf(t, root, func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = now.Add(-2*time.Hour), now.Add(-time.Minute)
		})}, wantKind: authn.ErrDenied, wantMsg: "expired"},
		{name: "not yet valid", chain: []*x509.Certificate{newLeaf(t, root, func(c *x509.Certificate) {
			c.NotBefore = now.Add(time.Minute)
		})}, wantKind: authn.ErrDenied, wantMsg: "expired or is not yet valid"},
		{name: "no EKU is fine", chain: []*x509.Certificate{newLeaf(t, root, func(c *x509.Certificate) { c.ExtKeyUsage = nil })},
			wantID: "spiffe://cluster.local/ns/team-a/sa/sa1"},
		{name: "server-only EKU", chain: []*x509.Certificate{newLeaf(t, root, func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		})}, wantKind: authn.ErrDenied, wantMsg: "key usage"},
		{name: "no URI", chain: []*x509.Certificate{newLeaf(t, root, uris(), func(c *x509.Certificate) { c.DNSNames = []string{"web.example"} })},
			wantKind: authn.ErrDenied, wantMsg: "0 URI SANs"},
		{name: "two URIs", chain: []*x509.Certificate{newLeaf(t, root, uris("spiffe://cluster.local/ns/team-a/sa/sa1", "spiffe://cluster.local/ns/kube-system/sa/admin"))},
			wantKind: authn.ErrDenied, wantMsg: "2 URI SANs"},
		{name: "not a SPIFFE URI", chain: []*x509.Certificate{newLeaf(t, root, uris("https://cluster.local/ns/team-a/sa/sa1"))},
			wantKind: authn.ErrDenied, wantMsg: "not a SPIFFE ID"},
		{name: "foreign trust domain", chain: []*x509.Certificate{newLeaf(t, root, uris("spiffe://evil.example/ns/team-a/sa/sa1"))},
			wantKind: authn.ErrDenied, wantMsg: `trust domain "evil.example" is not accepted`},
		{name: "alias trust domain mapped to primary", chain: []*x509.Certificate{newLeaf(t, root, uris("spiffe://old.example/ns/team-a/sa/sa1"))},
			wantID: "spiffe://cluster.local/ns/team-a/sa/sa1"},
		{name: "not a workload path", chain: []*x509.Certificate{newLeaf(t, root, uris("spiffe://cluster.local/ns/team-a/sa/sa1/extra"))},
			wantKind: authn.ErrDenied, wantMsg: "not of the form"},
		{name: "bad namespace", chain: []*x509.Certificate{newLeaf(t, root, uris("spiffe://cluster.local/ns/Team_A/sa/sa1"))},
			wantKind: authn.ErrDenied, wantMsg: "invalid namespace"},
		{name: "root CA as leaf", chain: []*x509.Certificate{root.cert}, wantKind: authn.ErrDenied, wantMsg: "CA certificate"},
		{name: "intermediate CA as leaf", chain: []*x509.Certificate{inter.cert}, wantKind: authn.ErrDenied, wantMsg: "CA certificate"},
		{name: "CA with a SPIFFE ID as leaf", chain: []*x509.Certificate{func() *x509.Certificate {
			key := newKey(t)
			tmpl := &x509.Certificate{IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
			uris("spiffe://cluster.local/ns/team-a/sa/sa1")(tmpl)
			return create(t, tmpl, root, key)
		}()}, wantKind: authn.ErrDenied, wantMsg: "CA certificate"},
		{name: "leaf signed by a leaf", chain: func() []*x509.Certificate {
			// A workload certificate must not be usable as an issuer.
			key := newKey(t)
			tmpl := &x509.Certificate{KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, BasicConstraintsValid: true,
				ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
			uris("spiffe://cluster.local/ns/team-a/sa/sa1")(tmpl)
			mid := create(t, tmpl, root, key)
			return []*x509.Certificate{newLeaf(t, &issuer{cert: mid, key: key}, uris("spiffe://cluster.local/ns/kube-system/sa/admin")), mid}
		}(), wantKind: authn.ErrDenied},
		{name: "too long a chain", chain: make([]*x509.Certificate, maxChain+1), wantKind: authn.ErrDenied, wantMsg: "at most"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, err := New(Config{
				TrustDomain: primary,
				Aliases:     []spiffeid.TrustDomain{alias},
				Anchors:     func(context.Context) ([]*x509.Certificate, error) { return []*x509.Certificate{root.cert}, nil },
				Now:         func() time.Time { return now },
				Clusters:    backed(),
			})
			if err != nil {
				t.Fatal(err)
			}
			id, err := a.Authenticate(context.Background(), &authn.Request{PeerCertificates: tc.chain})
			if tc.wantKind != nil {
				if !errors.Is(err, tc.wantKind) {
					t.Fatalf("err = %v, want %v", err, tc.wantKind)
				}
				if !strings.Contains(err.Error(), tc.wantMsg) {
					t.Fatalf("err = %q, want it to contain %q", err, tc.wantMsg)
				}
				t.Logf("refused: %v", err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.ID.String() != tc.wantID || id.Namespace != "team-a" || id.ServiceAccount != "sa1" {
				t.Fatalf("identity = %+v, want %s", id, tc.wantID)
			}
			if want := tc.chain[0].SerialNumber.Text(16); id.Subject != want {
				t.Fatalf("subject = %q, want serial %q", id.Subject, want)
			}
		})
	}
}

func TestAnchors(t *testing.T) {
	root := newCA(t, "root", nil)
	leaf := newLeaf(t, root)
	var anchors []*x509.Certificate
	var anchorsErr error
	a, err := New(Config{TrustDomain: primary, Now: func() time.Time { return now }, Clusters: backed(),
		Anchors: func(context.Context) ([]*x509.Certificate, error) { return anchors, anchorsErr }})
	if err != nil {
		t.Fatal(err)
	}
	req := &authn.Request{PeerCertificates: []*x509.Certificate{leaf}}

	if _, err := a.Authenticate(context.Background(), req); !errors.Is(err, authn.ErrUnavailable) {
		t.Fatalf("no anchors: %v", err)
	}
	anchorsErr = errors.New("secret not loaded")
	if _, err := a.Authenticate(context.Background(), req); !errors.Is(err, authn.ErrUnavailable) {
		t.Fatalf("anchor error: %v", err)
	}
	anchorsErr = nil
	anchors = []*x509.Certificate{root.cert}
	if _, err := a.Authenticate(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	// Rotated to a new root: certificates of the old one stop working at once.
	anchors = []*x509.Certificate{newCA(t, "new root", nil).cert}
	if _, err := a.Authenticate(context.Background(), req); !errors.Is(err, authn.ErrDenied) {
		t.Fatalf("old root after rotation: %v", err)
	}
	// Both roots during the overlap.
	anchors = append(anchors, root.cert)
	if _, err := a.Authenticate(context.Background(), req); err != nil {
		t.Fatalf("overlap: %v", err)
	}
}

func TestConfig(t *testing.T) {
	anchors := func(context.Context) ([]*x509.Certificate, error) { return nil, nil }
	if _, err := New(Config{Anchors: anchors, Clusters: backed()}); err == nil {
		t.Fatal("no trust domain accepted")
	}
	if _, err := New(Config{TrustDomain: primary, Clusters: backed()}); err == nil {
		t.Fatal("no anchors accepted")
	}
	if _, err := New(Config{TrustDomain: primary, Anchors: anchors}); err == nil || !strings.Contains(err.Error(), "live cluster view") {
		t.Fatalf("no cluster view accepted: %v", err)
	}
	if _, err := New(Config{TrustDomain: primary, Anchors: anchors, Clusters: backed(), Aliases: []spiffeid.TrustDomain{{}}}); err == nil {
		t.Fatal("empty alias accepted")
	}
	a, err := New(Config{TrustDomain: primary, Anchors: anchors, Clusters: backed(), Aliases: []spiffeid.TrustDomain{primary, alias, alias}})
	if err != nil || len(a.aliases) != 1 {
		t.Fatalf("aliases: %v %v", err, a.aliases)
	}
}

func TestChain(t *testing.T) {
	root := newCA(t, "root", nil)
	a, err := New(Config{TrustDomain: primary, Now: func() time.Time { return now }, Clusters: backed(),
		Anchors: func(context.Context) ([]*x509.Certificate, error) { return []*x509.Certificate{root.cert}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	id, err := authn.Chain{a}.Authenticate(context.Background(), &authn.Request{PeerCertificates: []*x509.Certificate{newLeaf(t, root)}})
	if err != nil || id.Method != "mtls" {
		t.Fatalf("%v %+v", err, id)
	}
}

// fakeCluster is a cluster's live view.
type fakeCluster struct {
	name   string
	synced bool
	sas    map[string]cluster.ServiceAccount
	pods   []cluster.Pod
}

func (f *fakeCluster) Name() string { return f.name }
func (f *fakeCluster) Synced() bool { return f.synced }
func (f *fakeCluster) ServiceAccount(ns, name string) (cluster.ServiceAccount, bool) {
	sa, ok := f.sas[ns+"/"+name]
	return sa, ok
}
func (f *fakeCluster) PodsOf(ns, sa string) []cluster.Pod {
	var out []cluster.Pod
	for _, p := range f.pods {
		if p.Namespace == ns && p.ServiceAccount == sa {
			out = append(out, p)
		}
	}
	return out
}

type fakeClusters []*fakeCluster

func (f fakeClusters) All() []Cluster {
	out := make([]Cluster, len(f))
	for i, c := range f {
		out[i] = c
	}
	return out
}

// backed is one synced cluster where team-a/sa1 has existed for a day and
// runs a pod started a day ago.
func backed() fakeClusters {
	return fakeClusters{{name: "c1", synced: true,
		sas:  map[string]cluster.ServiceAccount{"team-a/sa1": {Namespace: "team-a", Name: "sa1", UID: "sa-1", Created: now.Add(-24 * time.Hour)}},
		pods: []cluster.Pod{{Name: "p1", Namespace: "team-a", UID: "pod-1", ServiceAccount: "sa1", Node: "n1", Created: now.Add(-24 * time.Hour)}}}}
}

// TestRenewalIsBackedByTheLiveView: a certificate renews only while what
// made it valid still holds in a current view of a cluster, and a
// Kubernetes workload's renewal never outlives the presented certificate.
func TestRenewalIsBackedByTheLiveView(t *testing.T) {
	root := newCA(t, "root", nil)
	// The leaf was issued an hour ago (its NotBefore; slack a minute).
	leaf := newLeaf(t, root)
	issued := leaf.NotBefore
	const slack = time.Minute
	edit := func(f func(c *fakeCluster)) fakeClusters {
		cs := backed()
		f(cs[0])
		return cs
	}
	tests := []struct {
		name       string
		clusters   fakeClusters
		offCluster []Workload
		wantKind   error
		wantMsg    string
		wantCap    bool
	}{
		{name: "pod and service account older than the certificate", clusters: backed(), wantCap: true},
		{name: "pod started just before issuance, within the slack", clusters: edit(func(c *fakeCluster) { c.pods[0].Created = issued.Add(slack) }), wantCap: true},
		{name: "pod deleted", clusters: edit(func(c *fakeCluster) { c.pods = nil }), wantKind: authn.ErrDenied, wantMsg: "no running pod of it is older than the certificate"},
		{name: "pod being deleted", clusters: edit(func(c *fakeCluster) { c.pods[0].Deleting = true }), wantKind: authn.ErrDenied, wantMsg: "no running pod"},
		{name: "pod terminated", clusters: edit(func(c *fakeCluster) { c.pods[0].Terminated = true }), wantKind: authn.ErrDenied, wantMsg: "no running pod"},
		{name: "only a newer pod (another replica started after the certificate)", clusters: edit(func(c *fakeCluster) {
			c.pods[0].Created = issued.Add(slack + time.Second)
		}), wantKind: authn.ErrDenied, wantMsg: "no running pod"},
		{name: "service account recreated even within the slack: the pod is older than it", clusters: edit(func(c *fakeCluster) {
			c.sas["team-a/sa1"] = cluster.ServiceAccount{Namespace: "team-a", Name: "sa1", UID: "sa-2", Created: issued.Add(time.Second)}
		}), wantKind: authn.ErrDenied, wantMsg: "newer than the service account"},
		{name: "service account deleted", clusters: edit(func(c *fakeCluster) { delete(c.sas, "team-a/sa1") }), wantKind: authn.ErrDenied, wantMsg: "does not exist"},
		{name: "service account recreated after the certificate", clusters: edit(func(c *fakeCluster) {
			c.sas["team-a/sa1"] = cluster.ServiceAccount{Namespace: "team-a", Name: "sa1", UID: "sa-2", Created: issued.Add(slack + time.Second)}
		}), wantKind: authn.ErrDenied, wantMsg: "deleted and recreated"},
		{name: "view not current", clusters: edit(func(c *fakeCluster) { c.synced = false }), wantKind: authn.ErrUnavailable, wantMsg: "not current"},
		{name: "no cluster at all", clusters: fakeClusters{}, wantKind: authn.ErrDenied, wantMsg: "no cluster"},
		{name: "one current cluster backs it while another is stale", clusters: append(backed(), &fakeCluster{name: "c2"}), wantCap: true},
		{name: "gone from the current cluster, another is stale: cannot tell", clusters: append(edit(func(c *fakeCluster) { c.pods = nil }), &fakeCluster{name: "c2"}),
			wantKind: authn.ErrUnavailable},
		{name: "off-cluster workload: no pod needed, fresh lifetime", clusters: edit(func(c *fakeCluster) { c.pods = nil }),
			offCluster: []Workload{{"team-a", "*"}}},
		{name: "off-cluster workload whose service account was recreated", offCluster: []Workload{{"team-a", "sa1"}}, clusters: edit(func(c *fakeCluster) {
			c.sas["team-a/sa1"] = cluster.ServiceAccount{Namespace: "team-a", Name: "sa1", UID: "sa-2", Created: now}
		}), wantKind: authn.ErrDenied, wantMsg: "deleted and recreated"},
		{name: "another namespace's off-cluster entry does not apply", offCluster: []Workload{{"team-b", "*"}}, clusters: edit(func(c *fakeCluster) { c.pods = nil }),
			wantKind: authn.ErrDenied},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, err := New(Config{TrustDomain: primary, Now: func() time.Time { return now }, Clusters: tc.clusters,
				OffCluster: tc.offCluster, IssuanceSlack: slack,
				Anchors: func(context.Context) ([]*x509.Certificate, error) { return []*x509.Certificate{root.cert}, nil }})
			if err != nil {
				t.Fatal(err)
			}
			id, err := a.Authenticate(context.Background(), &authn.Request{PeerCertificates: []*x509.Certificate{leaf}})
			if tc.wantKind != nil {
				if !errors.Is(err, tc.wantKind) || !strings.Contains(err.Error(), tc.wantMsg) {
					t.Fatalf("err = %v, want %v containing %q", err, tc.wantKind, tc.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.Cluster != "c1" {
				t.Fatalf("cluster = %q, want c1", id.Cluster)
			}
			switch {
			case tc.wantCap && !id.NotAfter.Equal(leaf.NotAfter.Add(-2*time.Minute)):
				t.Fatalf("NotAfter cap = %s, want the leaf's %s less verification's slack", id.NotAfter, leaf.NotAfter)
			case !tc.wantCap && !id.NotAfter.IsZero():
				t.Fatalf("off-cluster workload capped at %s", id.NotAfter)
			}
		})
	}
}

func TestParseWorkload(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Workload
		ok   bool
	}{
		{"vms/billing", Workload{"vms", "billing"}, true},
		{"vms/*", Workload{"vms", "*"}, true},
		{"vms", Workload{}, false},
		{"/billing", Workload{}, false},
		{"vms/", Workload{}, false},
		{"vms/a/b", Workload{}, false},
		{"vms/bill*", Workload{}, false},
		{"*/billing", Workload{}, false},
		{"VMs/billing", Workload{}, false},
	} {
		got, err := ParseWorkload(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseWorkload(%q) = %+v, %v; want %+v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}
