package integration

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
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

// TestLeaderElectionFailureIsSeen: the Lease's namespace does not exist,
// so no replica can lead and nothing is published. That is an ERROR log
// line, meshca_leader_election_failing_seconds above 0 and, past four
// lease durations, a failing /readyz/leader-election, while /readyz (and
// issuance) stay up. Once the namespace exists the replica leads and all
// three say so.
func TestLeaderElectionFailureIsSeen(t *testing.T) {
	kube := testenv.StartKube(t)
	kube.CreateNamespace(t, "shop")
	kube.CreateServiceAccount(t, "shop", "cart")
	var logs testenv.LogBuffer
	const lease = 2 * time.Second
	b := startBrokerLogging(t, kube, func(c *config.Config) {
		c.LeaderElection.LeaseDuration = config.Duration{Duration: lease}
	}, &logs)
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + b.MetricsAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	took := waitUntil(t, "leader election reported failing", 20*time.Second, func() bool {
		code, _ := get("/readyz/leader-election")
		return code == http.StatusServiceUnavailable
	})
	_, body := get("/readyz/leader-election")
	t.Logf("/readyz/leader-election unready %s after start: %s", took.Round(time.Millisecond), strings.TrimSpace(body))
	if !strings.Contains(body, `namespaces \"istio-system\" not found`) && !strings.Contains(body, `namespaces "istio-system" not found`) {
		t.Errorf("the reason does not name the missing namespace: %s", body)
	}
	if code, _ := get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz answered %d: a failing election must not take issuance out of service", code)
	}
	if line := metricLine(t, b, `meshca_leader_election_failing_seconds{lease="istio-system/meshca-broker"}`); strings.HasSuffix(line, " 0") || strings.HasPrefix(line, "no ") {
		t.Errorf("failing seconds: %q", line)
	}
	var errorLine map[string]any
	for _, l := range strings.Split(logs.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) == nil && rec["level"] == "ERROR" && strings.HasPrefix(fmt.Sprint(rec["msg"]), "leader election failing") {
			errorLine = rec
			break
		}
	}
	if errorLine == nil || errorLine["lease"] != "istio-system/meshca-broker" {
		t.Fatalf("no ERROR line for the failing election naming its lease; log:\n%s", logs.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tok, err := kube.Token(ctx, "shop", "cart", []string{"istio-ca"}, time.Hour, "")
	if err != nil {
		t.Fatal(err)
	}
	key, _ := caclient.NewKey(true)
	if _, err := dial(t, b, nil).CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: cartID, Token: tok, TTL: time.Hour}); err != nil {
		t.Fatalf("issuance while the election fails: %v", err)
	}

	kube.CreateNamespace(t, "istio-system")
	took = waitUntil(t, "leading once the namespace exists", 20*time.Second, func() bool {
		return strings.HasSuffix(metricLine(t, b, `meshca_leader{lease="istio-system/meshca-broker"}`), " 1")
	})
	t.Logf("leading %s after the namespace was created", took.Round(time.Millisecond))
	if code, body := get("/readyz/leader-election"); code != http.StatusOK || !strings.Contains(body, "leading=true") {
		t.Errorf("/readyz/leader-election after recovery: %d %s", code, body)
	}
	if line := metricLine(t, b, `meshca_leader_election_failing_seconds{lease="istio-system/meshca-broker"}`); !strings.HasSuffix(line, " 0") {
		t.Errorf("failing seconds after recovery: %q", line)
	}
	if !strings.Contains(logs.String(), "leader election working again") {
		t.Errorf("no line saying the election works again")
	}
}
