package integration

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/broker/backends/backendtest"
	"github.com/meshca/broker/broker"
	"github.com/meshca/broker/config"
	"github.com/meshca/broker/integration/testenv"
)

// TestRootRotationWithTheIstioAgent runs the rotation runbook
// (docs/rotation.md) end to end: (a) trust the new root, (b) switch
// signing to a CA under it, (c) drop the old root. At every step the real
// Istio agent, trusting only the bundle it read from the published
// istio-ca-root-cert ConfigMap, connects to the broker and gets a
// certificate that verifies against that bundle.
func TestRootRotationWithTheIstioAgent(t *testing.T) {
	kube := testenv.StartKube(t)
	kube.CreateNamespace(t, "istio-system")
	kube.CreateNamespace(t, "shop")
	kube.CreateServiceAccount(t, "shop", "cart")
	kube.CreatePod(t, "shop", "cart-0", "cart")
	oldRoot, newRoot := testenv.NewCA(t, "old root"), testenv.NewCA(t, "new root")
	oldCA, newCA := oldRoot.NewIntermediate(t, "old issuing CA"), newRoot.NewIntermediate(t, "new issuing CA")
	extra := filepath.Join(t.TempDir(), "extra-roots.pem")
	setExtra := func(roots ...*testenv.CA) {
		var b []byte
		for _, r := range roots {
			b = append(b, r.CertPEM...)
		}
		if err := os.WriteFile(extra, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	dataDir := t.TempDir()
	var cacerts string
	start := func(issuing, root *testenv.CA) *broker.Broker {
		cacerts = testenv.WriteCACerts(t, issuing, root)
		return startBroker(t, kube, func(c *config.Config) {
			c.DataDir = dataDir
			c.TrustAnchorsRefresh = config.Duration{Duration: time.Second}
			c.ExtraTrustedRoots = extra
			c.Backend = config.Backend{Type: "local", Settings: backendSettings(t, map[string]any{"caCertsDir": cacerts})}
		})
	}
	bin := filepath.Join(t.TempDir(), "broker")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/broker").CombinedOutput(); err != nil {
		t.Fatalf("building the broker: %v\n%s", err, out)
	}
	// status runs `broker trust status` on the same configuration.
	// Its propagation wait is 0 unless the case gives its own, and a
	// selector, when given, is the publisher's.
	status := func(b *broker.Broker, args []string, selector string, want ...string) {
		t.Helper()
		c := map[string]any{
			"dataDir": dataDir, "clusterID": "Kubernetes", "extraTrustedRoots": extra,
			"authn":   map[string]any{"kubernetes": map[string]any{"kubeconfig": kube.Kubeconfig}},
			"backend": map[string]any{"type": "local", "local": map[string]any{"caCertsDir": cacerts}},
		}
		if selector != "" {
			c["publish"] = map[string]any{"namespaceSelector": selector}
		}
		cfg, _ := json.Marshal(c)
		args = append([]string{"trust", "status", "--config", backendtest.WriteFile(t, "config.yaml", cfg), "--addr", b.Addr(), "--propagation", "0s"}, args...)
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("broker trust status: %v\n%s", err, out)
		}
		for _, w := range want {
			if !strings.Contains(string(out), w) {
				t.Errorf("trust status lacks %q:\n%s", w, out)
			}
		}
		t.Logf("broker trust status:\n%s", out)
	}
	stop := func(b *broker.Broker) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		b.Stop(ctx)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// published waits until the shop namespace's ConfigMap holds exactly
	// the roots want, and returns its root-cert.pem.
	published := func(want ...*testenv.CA) []byte {
		t.Helper()
		var got []byte
		waitUntil(t, "the published bundle", 30*time.Second, func() bool {
			cm, err := kube.Client.CoreV1().ConfigMaps("shop").Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
			if err != nil {
				return false
			}
			got = []byte(cm.Data["root-cert.pem"])
			roots := parsePEM(t, got)
			if len(roots) != len(want) {
				return false
			}
			for i, r := range want {
				if !roots[i].Equal(r.Cert) {
					return false
				}
			}
			return true
		})
		return got
	}
	// agent runs the real Istio agent trusting only bundle and checks what
	// it got chains to wantRoot through bundle.
	agent := func(b *broker.Broker, bundle []byte, wantRoot *testenv.CA) {
		t.Helper()
		tok, err := kube.Token(ctx, "shop", "cart", []string{"istio-ca"}, time.Hour, "cart-0")
		if err != nil {
			t.Fatal(err)
		}
		got, err := testenv.RunPilotAgent(t, testenv.PilotAgentOptions{
			CAAddr: b.Addr(), Token: tok, RootPEM: bundle,
			Namespace: "shop", PodName: "cart-0", ServiceAccount: "cart", ECDSA: true,
		})
		if err != nil {
			t.Fatalf("the agent, trusting the published bundle, got no certificate: %v", err)
		}
		chain := parsePEM(t, got.CertChainPEM)
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(bundle)
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		paths, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		if err != nil {
			t.Fatalf("the agent's certificate does not verify against the published bundle: %v", err)
		}
		if top := paths[0][len(paths[0])-1]; !top.Equal(wantRoot.Cert) {
			t.Fatalf("the agent's certificate chains to %s, want %s", top.Subject, wantRoot.Cert.Subject)
		}
		// The agent writes root-cert.pem from the response's last element:
		// the same roots as the published bundle.
		agentRoots, published := parsePEM(t, got.RootCertPEM), parsePEM(t, bundle)
		if len(agentRoots) != len(published) {
			t.Errorf("the agent trusts %d roots, the published bundle has %d", len(agentRoots), len(published))
		}
		for _, r := range published {
			if !slices.ContainsFunc(agentRoots, r.Equal) {
				t.Errorf("the agent does not trust the published root %s", r.Subject)
			}
		}
		t.Logf("agent: certificate under %s; its roots: %d", wantRoot.Cert.Subject.CommonName, len(parsePEM(t, got.RootCertPEM)))
	}

	setExtra()
	b := start(oldCA, oldRoot)
	agent(b, published(oldRoot), oldRoot)

	// (a) Trust the new root: published everywhere, carried in every
	// response, while signing stays under the old one.
	setExtra(newRoot)
	agent(b, published(oldRoot, newRoot), oldRoot)
	// Just written: pods may not see it yet.
	status(b, []string{"--propagation", "10m"}, "", "6 of 6 namespaces publish the bundle", "last namespace written", "NOT SAFE")
	status(b, nil, "", "trust bundle: 2 roots", "6 of 6 namespaces publish the bundle", "serving certificate at", "chains to CN=old root", "safe to switch signing")
	// Only the namespaces the publisher serves count.
	status(b, nil, "kubernetes.io/metadata.name=shop", `publish.namespaceSelector "kubernetes.io/metadata.name=shop"`, "1 of 1 namespaces publish the bundle", "safe to switch signing")

	// (b) Switch signing to the new CA; keep trusting the old root.
	stop(b)
	setExtra(oldRoot)
	b = start(newCA, newRoot)
	bundle := published(newRoot, oldRoot)
	agent(b, bundle, newRoot)
	if s := b.Trust.Current(); len(s.Backend) != 1 || !s.Backend[0].Equal(newRoot.Cert) {
		t.Fatalf("after the switch the backend signs under %v", s.Backend)
	}

	// (c) Drop the old root.
	setExtra()
	agent(b, published(newRoot), newRoot)
	status(b, nil, "", "trust bundle: 1 roots", "chains to CN=new root", "no rotation in progress")
	t.Logf("final bundle: %v", b.Trust.Current().Fingerprints())
}

func parsePEM(t testing.TB, b []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return out
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}
