package integration

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/broker/backends/backendtest"
	"github.com/meshca/broker/caclient"
	"github.com/meshca/broker/config"
	"github.com/meshca/broker/integration/testenv"
)

// jwksFetch is what a jwks entry needs to read a real cluster's
// /openid/v1/jwks: its CA and a service-account token (every service
// account may read the discovery endpoints).
type jwksFetch struct{ url, caFile, tokenFile string }

func clusterKeySet(t *testing.T, k *testenv.Kube) jwksFetch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	k.CreateNamespace(t, "meshca-system")
	k.CreateServiceAccount(t, "meshca-system", "broker")
	tok, err := k.Token(ctx, "meshca-system", "broker", []string{k.Issuer}, time.Hour, "")
	if err != nil {
		t.Fatal(err)
	}
	return jwksFetch{
		url:       k.URL + "/openid/v1/jwks",
		caFile:    backendtest.WriteFile(t, "ca.crt", k.CAPEM),
		tokenFile: backendtest.WriteFile(t, "fetch-token", []byte(tok)),
	}
}

// TestJWKSIsNeverASecondVerifier proves, against a real kube-apiserver,
// that a jwks entry cannot become a second, laxer way in for a cluster's
// tokens that the cluster check refuses (here a deleted pod's):
//
//   - an entry claiming the cluster authn.kubernetes serves is refused at
//     start (the real `broker serve`), naming the key;
//   - an entry under another cluster ID but over the served cluster's keys
//     refuses that cluster's tokens (its issuer is a registry cluster's);
//   - without authn.kubernetes, an entry over a cluster's keys refuses the
//     cluster's pod-bound tokens unless allowKubernetesBoundTokens says
//     otherwise, and then accepts a deleted pod's token (the caveat).
func TestJWKSIsNeverASecondVerifier(t *testing.T) {
	kube := testenv.StartKube(t, testenv.KubeName("jwks-scope"))
	kube.CreateNamespace(t, "shop")
	kube.CreateServiceAccount(t, "shop", "cart")
	kube.CreatePod(t, "shop", "cart-0", "cart")
	kube.CreatePod(t, "shop", "cart-gone", "cart")
	keys := clusterKeySet(t, kube)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	token := func(pod string) string {
		t.Helper()
		tok, err := kube.Token(ctx, "shop", "cart", []string{"istio-ca"}, time.Hour, pod)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	live, gone, unbound := token("cart-0"), token("cart-gone"), token("")
	kube.DeletePod(t, "shop", "cart-gone")

	entry := func(clusterID string, allowBound bool) config.JWKS {
		return config.JWKS{Issuer: kube.Issuer, URL: keys.url, CAFile: keys.caFile, TokenFile: keys.tokenFile,
			ClusterID: clusterID, AllowKubernetesBoundTokens: allowBound}
	}

	t.Run("an entry for the served cluster is refused at start", func(t *testing.T) {
		bin := filepath.Join(t.TempDir(), "broker")
		if out, err := exec.Command("go", "build", "-o", bin, "../cmd/broker").CombinedOutput(); err != nil {
			t.Fatalf("building the broker: %v\n%s", err, out)
		}
		for _, tc := range []struct{ name, clusterLines, mention string }{
			{"the local cluster's ID", "      clusterID: Kubernetes\n", `authn.jwks[0].clusterID: "Kubernetes" is the broker's own cluster`},
			{"no cluster ID (it used to default to the local one)", "", "authn.jwks[0].clusterID: must be set"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				cfg := fmt.Sprintf("listen: 127.0.0.1:0\nmetricsListen: \"off\"\ndataDir: %s\nauthn:\n  kubernetes:\n    kubeconfig: %s\n"+
					"  jwks:\n    - issuer: %s\n      url: %s\n      caFile: %s\n      tokenFile: %s\n%s",
					t.TempDir(), kube.Kubeconfig, kube.Issuer, keys.url, keys.caFile, keys.tokenFile, tc.clusterLines)
				path := backendtest.WriteFile(t, "config.yaml", []byte(cfg))
				sctx, cancel := context.WithTimeout(ctx, time.Minute)
				defer cancel()
				out, err := exec.CommandContext(sctx, bin, "serve", "--config", path).CombinedOutput()
				if sctx.Err() != nil {
					t.Fatalf("broker serve did not refuse the configuration; it ran:\n%s", out)
				}
				if err == nil || !strings.Contains(string(out), tc.mention) {
					t.Fatalf("broker serve: %v, want a refusal naming %q:\n%s", err, tc.mention, out)
				}
				t.Logf("broker serve refused: %s", strings.TrimSpace(string(out)))
			})
		}
	})

	type call struct {
		name, token, clusterID string
		code                   codes.Code
		mention                string
	}
	run := func(t *testing.T, cl *caclient.Client, calls []call) {
		t.Helper()
		for _, c := range calls {
			key, err := caclient.NewKey(true)
			if err != nil {
				t.Fatal(err)
			}
			_, err = cl.CreateCertificate(ctx, caclient.Request{Key: key, Token: c.token, ClusterID: c.clusterID, TTL: time.Hour})
			msg := status.Convert(err).Message()
			t.Logf("%s: %s %s", c.name, status.Code(err), msg)
			if status.Code(err) != c.code || !strings.Contains(msg, c.mention) {
				t.Errorf("%s: got %v, want %s mentioning %q", c.name, err, c.code, c.mention)
			}
		}
	}

	t.Run("another cluster ID over the served cluster's keys", func(t *testing.T) {
		b := startBroker(t, kube, func(c *config.Config) {
			c.Authn.JWKS = []config.JWKS{entry("vms", false)}
		})
		run(t, dial(t, b, nil), []call{
			{"live pod, its cluster", live, "Kubernetes", codes.OK, ""},
			{"deleted pod, its cluster", gone, "Kubernetes", codes.Unauthenticated, "pod shop/cart-gone it is bound to no longer exists"},
			{"deleted pod, through the key set", gone, "vms", codes.Unauthenticated, `is cluster "Kubernetes"'s`},
			{"unbound token, through the key set", unbound, "vms", codes.Unauthenticated, `is cluster "Kubernetes"'s`},
			{"live pod, through the key set", live, "vms", codes.Unauthenticated, `is cluster "Kubernetes"'s`},
		})
	})

	t.Run("without authn.kubernetes, bound tokens are refused unless allowed", func(t *testing.T) {
		refusing := startBroker(t, nil, func(c *config.Config) {
			c.Authn.JWKS = []config.JWKS{entry("vms", false)}
		})
		run(t, dial(t, refusing, nil), []call{
			{"deleted pod", gone, "vms", codes.Unauthenticated, "bound to Kubernetes pod cart-gone"},
			{"live pod", live, "vms", codes.Unauthenticated, "bound to Kubernetes pod cart-0"},
			// Not bound to an object: what the key set is for (it checks
			// nothing live, so keep such tokens short-lived).
			{"unbound token", unbound, "vms", codes.OK, ""},
		})
		allowing := startBroker(t, nil, func(c *config.Config) {
			c.Authn.JWKS = []config.JWKS{entry("vms", true)}
		})
		run(t, dial(t, allowing, nil), []call{
			// The documented caveat of allowKubernetesBoundTokens.
			{"deleted pod, allowed: accepted until it expires", gone, "vms", codes.OK, ""},
		})
	})
}
