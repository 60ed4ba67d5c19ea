package servingcert

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/backends/localca"
	"github.com/meshca/broker/trust"
)

func newRotator(t *testing.T, signer backends.Signer) *Rotator {
	t.Helper()
	r, err := New(Config{DNSNames: []string{"istiod.istio-system.svc", "meshca.example"}, TTL: time.Hour}, signer, mustBundle(t, signer.TrustAnchors), nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestIssueServesTheDNSNamesFromTheBackend(t *testing.T) {
	ca, _, err := localca.LoadOrCreate(t.TempDir(), localca.Config{})
	if err != nil {
		t.Fatal(err)
	}
	r := newRotator(t, ca)
	if _, err := r.GetCertificate(nil); err == nil {
		t.Fatal("a certificate was served before one was issued")
	}
	if err := r.Issue(context.Background()); err != nil {
		t.Fatal(err)
	}
	c, _ := r.GetCertificate(nil)
	anchors, _ := ca.TrustAnchors(context.Background())
	pool := x509.NewCertPool()
	pool.AddCert(anchors[0])
	for _, name := range []string{"istiod.istio-system.svc", "meshca.example"} {
		if _, err := c.Leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if len(c.Leaf.URIs) != 0 || c.Leaf.IsCA {
		t.Errorf("serving certificate has URIs %v or is a CA", c.Leaf.URIs)
	}
}

// TestRunRenewsWhenTwoThirdsHavePassed makes the current certificate look
// old and checks Run replaces it without anyone restarting anything.
func TestRunRenewsWhenTwoThirdsHavePassed(t *testing.T) {
	ca, _, _ := localca.LoadOrCreate(t.TempDir(), localca.Config{})
	r := newRotator(t, ca)
	if err := r.Issue(context.Background()); err != nil {
		t.Fatal(err)
	}
	old := *r.Current()
	aged := *old.Leaf
	aged.NotBefore = time.Now().Add(-50 * time.Minute)
	aged.NotAfter = aged.NotBefore.Add(time.Hour)
	old.Leaf = &aged
	r.cur.Store(&old)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for r.Current() == &old {
		if time.Now().After(deadline) {
			t.Fatal("the aged certificate was not renewed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if d := r.renewIn(); d < 30*time.Minute {
		t.Errorf("next renewal in %s, want about 40m", d)
	}
}

type failing struct{ backends.Signer }

func (failing) Sign(context.Context, *backends.Request) ([]*x509.Certificate, error) {
	return nil, errors.New("backend down")
}

func TestFailedRenewalKeepsServingTheCurrentCertificate(t *testing.T) {
	ca, _, _ := localca.LoadOrCreate(t.TempDir(), localca.Config{})
	r := newRotator(t, ca)
	if err := r.Issue(context.Background()); err != nil {
		t.Fatal(err)
	}
	cur := r.Current()
	r.signer = failing{ca}
	if err := r.Issue(context.Background()); err == nil {
		t.Fatal("issue through a failing backend succeeded")
	}
	if got, _ := r.GetCertificate(&tls.ClientHelloInfo{}); got != cur {
		t.Fatal("a failed renewal dropped the working certificate")
	}
}

func mustBundle(t testing.TB, src trust.Source) *trust.Bundle {
	t.Helper()
	b, err := trust.LoadBundle(context.Background(), trust.BundleConfig{Backend: src})
	if err != nil {
		t.Fatal(err)
	}
	return b
}
