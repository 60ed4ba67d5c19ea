package integration

import (
	"context"
	"crypto/tls"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/broker/broker"
	"github.com/meshca/broker/caclient"
	"github.com/meshca/broker/config"
	"github.com/meshca/broker/integration/testenv"
)

// TestRenewalTrustsOnlyTheBrokersIssuingCAs: the trust anchor is a
// corporate root that also signs another team's CA. A certificate with a
// valid SPIFFE ID from that other CA must not renew; the broker's own
// certificates renew, also those issued by its previous issuing CA after a
// rotation (restart with new cacerts under the same root) during the
// overlap.
func TestRenewalTrustsOnlyTheBrokersIssuingCAs(t *testing.T) {
	root := testenv.NewCA(t, "corp root")
	meshCA := root.NewIntermediate(t, "mesh issuing CA")
	otherTeam := root.NewIntermediate(t, "another team's CA")
	nextMeshCA := root.NewIntermediate(t, "mesh issuing CA 2")
	kube := testenv.StartKube(t)
	kube.CreateNamespace(t, "shop")
	kube.CreateServiceAccount(t, "shop", "cart")
	kube.CreatePod(t, "shop", "cart-0", "cart")
	dataDir := t.TempDir()
	start := func(issuing *testenv.CA) *broker.Broker {
		return startBroker(t, kube, func(c *config.Config) {
			c.DataDir = dataDir
			c.Backend = config.Backend{Type: "local", Settings: backendSettings(t, map[string]any{"caCertsDir": testenv.WriteCACerts(t, issuing, root)})}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tok, err := kube.Token(ctx, "shop", "cart", []string{"istio-ca"}, time.Hour, "cart-0")
	if err != nil {
		t.Fatal(err)
	}
	issueWithToken := func(b *broker.Broker) *tls.Certificate {
		t.Helper()
		key, _ := caclient.NewKey(true)
		got, err := dial(t, b, nil).CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: cartID, Token: tok, TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return clientCert(key, got)
	}
	renew := func(b *broker.Broker, cert *tls.Certificate) error {
		key, _ := caclient.NewKey(true)
		_, err := dial(t, b, cert).CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: cartID, TTL: time.Hour})
		return err
	}
	foreign := func() *tls.Certificate {
		certPEM, keyPEM := otherTeam.Issue(t, testenv.LeafOptions{URIs: []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/shop/sa/cart"}}})
		pair, err := tls.X509KeyPair(append(certPEM, otherTeam.CertPEM...), keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return &pair
	}()

	b1 := start(meshCA)
	before := issueWithToken(b1)
	if err := renew(b1, before); err != nil {
		t.Fatalf("the broker's own certificate did not renew: %v", err)
	}
	err = renew(b1, foreign)
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "not a CA this broker issues with") {
		t.Fatalf("another CA's certificate under the same root: %v, want Unauthenticated naming the reason", err)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	b1.Stop(sctx)
	scancel()

	// Rotation: the same install now signs with the next issuing CA.
	b2 := start(nextMeshCA)
	if err := renew(b2, before); err != nil {
		t.Fatalf("a certificate from before the rotation did not renew during the overlap: %v", err)
	}
	if err := renew(b2, issueWithToken(b2)); err != nil {
		t.Fatalf("a certificate from the new issuing CA did not renew: %v", err)
	}
	if err := renew(b2, foreign); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("another CA's certificate after the rotation: %v, want Unauthenticated", err)
	}
}
