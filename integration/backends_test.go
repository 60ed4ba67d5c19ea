package integration

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/broker/authn"
	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/backends/backendtest"
	"github.com/meshca/broker/caclient"
	"github.com/meshca/broker/config"
	"github.com/meshca/broker/devissuer"
	fakepca "github.com/meshca/broker/integration/fakes/awspca"
	fakecas "github.com/meshca/broker/integration/fakes/gcpcas"
	"github.com/meshca/broker/integration/testenv"
	"github.com/meshca/broker/policy"
)

// backendCase starts one backend's real server (or wire-faithful fake) and
// returns the broker's backend configuration for it.
type backendCase struct {
	name  string
	setup func(t testing.TB) config.Backend
}

func backendCases() []backendCase {
	return []backendCase{
		{"local", func(t testing.TB) config.Backend {
			return config.Backend{Type: "local", Settings: backendSettings(t, map[string]any{"dir": t.TempDir()})}
		}},
		{"vault", func(t testing.TB) config.Backend {
			v := testenv.StartVault(t)
			pki := v.EnablePKI(t, testenv.VaultPKIOptions{})
			return config.Backend{Type: "vault", Settings: backendSettings(t, map[string]any{
				"address":          v.Addr,
				"role":             pki.Role,
				"mount":            pki.Mount,
				"trustAnchorsFile": backendtest.WriteFile(t, "vault-root.pem", pki.RootPEM),
				"auth":             map[string]any{"method": "token", "token": map[string]any{"token": v.RootToken}},
			})}
		}},
		{"stepca", func(t testing.TB) config.Backend {
			s := testenv.StartStepCA(t)
			return config.Backend{Type: "stepca", Settings: backendSettings(t, map[string]any{
				"url":          s.URL,
				"rootFile":     s.RootFile,
				"provisioner":  s.Provisioner,
				"keyId":        s.ProvisionerKID,
				"passwordFile": s.PasswordFile,
				"keyFile":      s.ProvisionerKeyFile,
			})}
		}},
		{"awspca", func(t testing.TB) config.Backend {
			_, backend := startAWSFake(t, fakepca.Options{StrictEmptySubject: true})
			return backend
		}},
		{"gcpcas", func(t testing.TB) config.Backend {
			_, backend := startCASFake(t, fakecas.Options{})
			return backend
		}},
	}
}

// startAWSFake starts the AWS Private CA fake and returns it with the
// broker's backend configuration for it.
func startAWSFake(t testing.TB, opts fakepca.Options) (*fakepca.Server, config.Backend) {
	t.Helper()
	f, err := fakepca.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	t.Setenv("AWS_ACCESS_KEY_ID", fakepca.DefaultAccessKeyID)
	t.Setenv("AWS_SECRET_ACCESS_KEY", fakepca.DefaultSecretAccessKey)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	return f, config.Backend{Type: "awspca", Settings: backendSettings(t, map[string]any{
		"caArn":        f.CAArn,
		"endpoint":     f.URL,
		"pollInterval": "20ms",
	})}
}

// startCASFake starts the Google CAS fake and returns it with the broker's
// backend configuration for it.
func startCASFake(t testing.TB, opts fakecas.Options) (*fakecas.Server, config.Backend) {
	t.Helper()
	f, err := fakecas.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, config.Backend{Type: "gcpcas", Settings: backendSettings(t, map[string]any{
		"caPool":   f.PoolName,
		"endpoint": f.Addr,
		"insecure": true,
	})}
}

// TestIstioAgentThroughEachBackend: the real Istio agent, authenticated
// by a real API server, gets its certificate through the broker from
// every backend.
func TestIstioAgentThroughEachBackend(t *testing.T) {
	kube := testenv.StartKube(t)
	kube.CreateNamespace(t, "shop")
	kube.CreateServiceAccount(t, "shop", "cart")
	for _, bc := range backendCases() {
		t.Run(bc.name, func(t *testing.T) {
			backend := bc.setup(t)
			b := startBroker(t, kube, func(c *config.Config) { c.Backend = backend })
			pod := "cart-" + bc.name
			kube.CreatePod(t, "shop", pod, "cart")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			tok, err := kube.Token(ctx, "shop", "cart", []string{testenv.IstioCAAudience}, time.Hour, pod)
			if err != nil {
				t.Fatal(err)
			}
			got, err := testenv.RunPilotAgent(t, testenv.PilotAgentOptions{
				CAAddr: b.Addr(), Token: tok, RootPEM: rootsPEM(t, b),
				Namespace: "shop", PodName: pod, ServiceAccount: "cart", ECDSA: true,
			})
			if err != nil {
				t.Fatal(err)
			}
			checkAgentCerts(t, got, "spiffe://cluster.local/ns/shop/sa/cart", b, "ECDSA")
		})
	}
}

// BenchmarkBrokerOverBackend measures, for each backend in one run, a
// direct Sign on the backend (the PKI round trip alone) and the whole
// CreateCertificate through the broker (TLS, JWT verification, policy,
// the same Sign, verification). broker ns/op divided by direct ns/op is
// the broker's overhead ratio.
func BenchmarkBrokerOverBackend(b *testing.B) {
	const id = "spiffe://cluster.local/ns/bench/sa/load"
	for _, bc := range backendCases() {
		b.Run(bc.name, func(b *testing.B) {
			backend := bc.setup(b)
			iss, err := devissuer.New(devissuer.DefaultIssuer)
			if err != nil {
				b.Fatal(err)
			}
			jwksFile := filepath.Join(b.TempDir(), "jwks.json")
			if err := iss.WriteJWKS(jwksFile); err != nil {
				b.Fatal(err)
			}
			br := startBroker(b, nil, func(c *config.Config) {
				c.Backend = backend
				c.Authn.JWKS = []config.JWKS{{Issuer: iss.URL, File: jwksFile, ClusterID: "Kubernetes"}}
				c.Log.Level = "error"
			})
			tok, err := iss.Token("bench", "load", []string{"istio-ca"}, time.Hour)
			if err != nil {
				b.Fatal(err)
			}
			signer, err := backends.New(context.Background(), backend.Type, backends.Options{Config: backend.Settings, DataDir: b.TempDir()})
			if err != nil {
				b.Fatal(err)
			}
			// Distinct CSRs, so that no PKI's idempotency cache answers
			// for a repeated request.
			const n = 256
			csrs := make([]string, n)
			approved := make([]*backends.Request, n)
			pol, _ := policy.New(policy.Defaults())
			for i := range csrs {
				key, _ := caclient.NewKey(true)
				csrs[i], _ = caclient.CSR(key, id)
				d, err := pol.Authorize(&authn.Identity{ID: spiffeid.RequireFromString(id)}, policy.Request{CSRPEM: csrs[i], ValiditySeconds: 3600})
				if err != nil {
					b.Fatal(err)
				}
				approved[i] = &backends.Request{CSR: d.CSR, Template: d.Template}
			}
			ctx := context.Background()

			b.Run("direct", func(b *testing.B) {
				i := 0
				for b.Loop() {
					if _, err := signer.Sign(ctx, approved[i%n]); err != nil {
						b.Fatal(err)
					}
					i++
				}
			})
			cl := dial(b, br, nil)
			b.Run("broker", func(b *testing.B) {
				i := 0
				for b.Loop() {
					if _, err := cl.CreateCertificate(ctx, caclient.Request{CSRPEM: csrs[i%n], Token: tok, TTL: time.Hour}); err != nil {
						b.Fatal(err)
					}
					i++
				}
			})
		})
	}
}
