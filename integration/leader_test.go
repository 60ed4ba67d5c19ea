package integration

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/broker/broker"
	"github.com/meshca/broker/caclient"
	"github.com/meshca/broker/config"
	"github.com/meshca/broker/integration/testenv"
)

// TestLeaderKeepsIstiodCertificateAndHandsOver: two replicas of one
// install; only the leader writes istiod's Secret; when the leader stops,
// the other takes over within the lease duration, and certificates are
// served throughout.
func TestLeaderKeepsIstiodCertificateAndHandsOver(t *testing.T) {
	kube := testenv.StartKube(t)
	kube.CreateNamespace(t, "istio-system")
	kube.CreateNamespace(t, "shop")
	kube.CreateServiceAccount(t, "shop", "cart")
	// Both replicas sign under the same root, as replicas of one install
	// do (a shared cacerts or backend).
	caDir := t.TempDir()
	replica := func(name string) *broker.Broker {
		return startBroker(t, kube, func(c *config.Config) {
			c.Backend = config.Backend{Type: "local", Settings: backendSettings(t, map[string]any{"dir": caDir})}
			c.LeaderElection.Identity = name
			c.LeaderElection.LeaseDuration = config.Duration{Duration: 3 * time.Second}
			c.Istiod = config.Istiod{Enabled: true, Revision: "canary", ExtraDNSNames: []string{"istiod.example.com"}}
		})
	}
	a := replica("replica-a")
	b := replica("replica-b")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	secrets := kube.Client.CoreV1().Secrets("istio-system")
	var secret *corev1.Secret
	waitUntil(t, "istiod-tls", 20*time.Second, func() bool {
		s, err := secrets.Get(ctx, "istiod-tls", metav1.GetOptions{})
		secret = s
		return err == nil
	})
	leaf := checkIstiodSecret(t, secret, a)

	lease, err := kube.Client.CoordinationV1().Leases("istio-system").Get(ctx, "meshca-broker", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	holder := *lease.Spec.HolderIdentity
	leaderB, other := a, b
	if holder == "replica-b" {
		leaderB, other = b, a
	}
	t.Logf("leader: %s; first istiod certificate serial %x", holder, leaf.SerialNumber)

	// Serve from the follower throughout the handover.
	cl := dial(t, other, nil)
	tok, err := kube.Token(ctx, "shop", "cart", []string{"istio-ca"}, time.Hour, "")
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	leaderB.Stop(sctx)
	scancel()
	if err := secrets.Delete(ctx, "istiod-tls", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	served := 0
	took := waitUntil(t, "the new leader restores istiod-tls", 30*time.Second, func() bool {
		key, _ := caclient.NewKey(true)
		if _, err := cl.CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: cartID, Token: tok, TTL: time.Hour}); err != nil {
			t.Fatalf("the follower stopped serving during the handover: %v", err)
		}
		served++
		_, err := secrets.Get(ctx, "istiod-tls", metav1.GetOptions{})
		return err == nil
	})
	t.Logf("istiod-tls restored by the new leader %s after the old one stopped (lease 3s, reconcile 30s worst case); %d certificates served meanwhile", took.Round(time.Millisecond), served)
	lease, _ = kube.Client.CoordinationV1().Leases("istio-system").Get(ctx, "meshca-broker", metav1.GetOptions{})
	if *lease.Spec.HolderIdentity == holder {
		t.Fatalf("the lease is still held by the stopped %s", holder)
	}
}

func checkIstiodSecret(t *testing.T, s *corev1.Secret, b *broker.Broker) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(s.Data[corev1.TLSCertKey])
	if block == nil {
		t.Fatal("tls.crt holds no PEM")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"istiod.istio-system.svc", "istiod-canary.istio-system.svc", "istiod.example.com"} {
		if !slices.Contains(leaf.DNSNames, n) {
			t.Errorf("istiod's certificate lacks %s: %v", n, leaf.DNSNames)
		}
	}
	if string(s.Data["ca.crt"]) != string(rootsPEM(t, b)) {
		t.Error("ca.crt is not the trust bundle")
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.Data["ca.crt"])
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "istiod.istio-system.svc"}); err != nil {
		t.Errorf("istiod's certificate does not verify to ca.crt: %v", err)
	}
	return leaf
}
