package integration

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/broker/backends/backendtest"
	"github.com/meshca/broker/caclient"
	"github.com/meshca/broker/config"
	"github.com/meshca/broker/devissuer"
	"github.com/meshca/broker/integration/testenv"
)

// TestBackendOutageIsUnavailableThenRecovers: while the PKI is down the
// broker answers Unavailable (which the Istio agent retries) within its
// sign timeout, and serves again as soon as the PKI is back, with no
// restart.
func TestBackendOutageIsUnavailableThenRecovers(t *testing.T) {
	type pausable interface {
		Pause(testing.TB)
		Resume(testing.TB)
	}
	cases := []struct {
		name  string
		start func(t *testing.T) (config.Backend, pausable)
	}{
		{"vault", func(t *testing.T) (config.Backend, pausable) {
			v := testenv.StartVault(t)
			pki := v.EnablePKI(t, testenv.VaultPKIOptions{})
			return config.Backend{Type: "vault", Settings: backendSettings(t, map[string]any{
				"address": v.Addr, "role": pki.Role, "mount": pki.Mount, "timeout": "1s",
				"trustAnchorsFile": backendtest.WriteFile(t, "root.pem", pki.RootPEM),
				"auth":             map[string]any{"method": "token", "token": map[string]any{"token": v.RootToken}},
			})}, v
		}},
		{"stepca", func(t *testing.T) (config.Backend, pausable) {
			s := testenv.StartStepCA(t)
			return config.Backend{Type: "stepca", Settings: backendSettings(t, map[string]any{
				"url": s.URL, "rootFile": s.RootFile, "provisioner": s.Provisioner, "keyId": s.ProvisionerKID,
				"passwordFile": s.PasswordFile, "keyFile": s.ProvisionerKeyFile, "timeout": "1s",
			})}, s
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			backend, pki := tc.start(t)
			iss, _ := devissuer.New(devissuer.DefaultIssuer)
			jwks := backendtest.WriteFile(t, "jwks.json", mustJWKS(t, iss))
			b := startBroker(t, nil, func(c *config.Config) {
				c.Backend = backend
				c.Authn.JWKS = []config.JWKS{{Issuer: iss.URL, File: jwks, ClusterID: "Kubernetes"}}
				c.SignTimeout = config.Duration{Duration: 3 * time.Second}
			})
			cl := dial(t, b, nil)
			tok, _ := iss.Token("shop", "cart", []string{"istio-ca"}, time.Hour)
			issue := func() error {
				key, _ := caclient.NewKey(true)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				_, err := cl.CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: "spiffe://cluster.local/ns/shop/sa/cart", Token: tok, TTL: time.Hour})
				return err
			}
			if err := issue(); err != nil {
				t.Fatal(err)
			}
			pki.Pause(t)
			start := time.Now()
			err := issue()
			t.Logf("during the outage the broker answered: %v", err)
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("during the outage: %v, want Unavailable", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("Unavailable took %s, beyond the 3s sign timeout", d)
			}
			pki.Resume(t)
			if err := issue(); err != nil {
				t.Fatalf("after the outage: %v", err)
			}
		})
	}
}

func mustJWKS(t testing.TB, iss *devissuer.Issuer) []byte {
	t.Helper()
	b, err := iss.JWKS()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
