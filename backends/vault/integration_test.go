package vault

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/backends/backendtest"
	"github.com/meshca/broker/dn"
	"github.com/meshca/broker/integration/testenv"
)

const (
	spiffeID = "spiffe://cluster.local/ns/default/sa/web"
	// signerPolicy is the least a broker needs: update on the sign path.
	// (<mount>/cert/ca_chain is unauthenticated in Vault; renew-self and
	// lookup-self come with Vault's default policy.)
	signerPolicy = `path "pki/sign/istio" { capabilities = ["update"] }
path "pki/sign-verbatim/istio" { capabilities = ["update"] }
`
)

// vaultPKI is a root CA mount (pki-root) and an intermediate mount (pki)
// signed by it, with a SPIFFE role "istio" on the intermediate.
type vaultPKI struct {
	v       *testenv.Vault
	root    *vaultapi.Client
	rootPEM []byte
}

func setupVault(t testing.TB, v *testenv.Vault) *vaultPKI {
	t.Helper()
	rootPKI := v.EnablePKI(t, testenv.VaultPKIOptions{Mount: "pki-root", Role: "unused"})
	c := v.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("vault setup: %s: %v", what, err)
		}
	}
	must("mount pki", c.Sys().MountWithContext(ctx, "pki", &vaultapi.MountInput{Type: "pki", Config: vaultapi.MountConfigInput{MaxLeaseTTL: "720h"}}))
	sec, err := c.Logical().WriteWithContext(ctx, "pki/intermediate/generate/internal", map[string]any{
		"common_name": "meshca test intermediate", "key_type": "ec", "key_bits": 256})
	must("generate intermediate", err)
	sec, err = c.Logical().WriteWithContext(ctx, "pki-root/root/sign-intermediate", map[string]any{
		"csr": sec.Data["csr"], "common_name": "meshca test intermediate", "ttl": "700h", "format": "pem"})
	must("sign intermediate", err)
	// Importing the root with the intermediate lets Vault build the full
	// chain, so ca_chain (and the broker's anchor discovery) reach the root.
	_, err = c.Logical().WriteWithContext(ctx, "pki/intermediate/set-signed", map[string]any{
		"certificate": sec.Data["certificate"].(string) + "\n" + string(rootPKI.RootPEM)})
	must("set signed", err)
	_, err = c.Logical().WriteWithContext(ctx, "pki/roles/istio", spiffeRole("spiffe://*"))
	must("role istio", err)
	_, err = c.Logical().WriteWithContext(ctx, "pki/roles/strict", spiffeRole("spiffe://cluster.local/*"))
	must("role strict", err)
	must("policy", c.Sys().PutPolicyWithContext(ctx, "meshca-signer", signerPolicy))
	return &vaultPKI{v: v, root: c, rootPEM: rootPKI.RootPEM}
}

func spiffeRole(uris string) map[string]any {
	return map[string]any{
		"allow_any_name":      true,
		"enforce_hostnames":   false,
		"require_cn":          false,
		"use_csr_common_name": false,
		"use_csr_sans":        true,
		"allowed_uri_sans":    uris,
		"allow_ip_sans":       false,
		"server_flag":         true,
		"client_flag":         true,
		"key_usage":           []string{"DigitalSignature", "KeyEncipherment"},
		"key_type":            "any",
		"max_ttl":             "720h",
		"no_store":            true,
	}
}

// token creates a child token of root with the given options.
func (p *vaultPKI) token(t testing.TB, req *vaultapi.TokenCreateRequest) string {
	t.Helper()
	sec, err := p.root.Auth().Token().Create(req)
	if err != nil {
		t.Fatalf("create token: %v", err)
	}
	return sec.Auth.ClientToken
}

func (p *vaultPKI) signer(t testing.TB, auth AuthConfig, mutate ...func(*Config)) *Signer {
	t.Helper()
	cfg := Config{Address: p.v.Addr, Role: "istio", Timeout: backends.Duration{Duration: 5 * time.Second}, Auth: auth}
	for _, m := range mutate {
		m(&cfg)
	}
	s, err := newSigner(context.Background(), cfg, backendtest.QuietLogger())
	if err != nil {
		t.Fatalf("vault signer: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func tokenFileAuth(t testing.TB, token string) (AuthConfig, string) {
	f := backendtest.WriteFile(t, "vault-token", []byte(token))
	return AuthConfig{Method: "token", Token: &TokenAuth{TokenFile: f}}, f
}

func TestVault(t *testing.T) {
	v := testenv.StartVault(t)
	p := setupVault(t, v)
	signerToken := func(t *testing.T) string {
		return p.token(t, &vaultapi.TokenCreateRequest{Policies: []string{"meshca-signer"}, TTL: "1h"})
	}

	t.Run("token auth, anchors from Vault", func(t *testing.T) {
		auth, _ := tokenFileAuth(t, signerToken(t))
		s := p.signer(t, auth)
		backendtest.Run(t, s, spiffeID)
		anchors, err := s.TrustAnchors(context.Background())
		if err != nil || len(anchors) != 1 || string(anchors[0].Raw) != string(pemDER(t, p.rootPEM)) {
			t.Fatalf("anchors from Vault = %v, %v; want pki-root's root", anchors, err)
		}
	})

	t.Run("chain is leaf then intermediate then root, once each", func(t *testing.T) {
		s := p.signer(t, AuthConfig{Method: "token", Token: &TokenAuth{Token: v.RootToken}})
		req, _ := backendtest.NewRequest(t, spiffeID, 2*time.Hour)
		chain, err := s.Sign(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		backendtest.CheckIssued(t, s, req, chain)
		if len(chain) != 3 || chain[1].Subject.CommonName != "meshca test intermediate" || !selfSigned(chain[2]) {
			t.Errorf("chain = %v", subjects(chain))
		}
		if d := chain[0].NotAfter.Sub(req.Template.NotAfter); d > 2*time.Second || d < -2*time.Second {
			t.Errorf("leaf NotAfter %v, template %v", chain[0].NotAfter, req.Template.NotAfter)
		}
		if chain[0].Subject.String() != "" {
			t.Errorf("leaf subject = %q, want empty", chain[0].Subject)
		}
	})

	t.Run("token from env, anchors from file", func(t *testing.T) {
		t.Setenv("MESHCA_TEST_VAULT_TOKEN", signerToken(t))
		s := p.signer(t, AuthConfig{Method: "token", Token: &TokenAuth{TokenEnv: "MESHCA_TEST_VAULT_TOKEN"}}, func(c *Config) {
			c.TrustAnchorsFile = backendtest.WriteFile(t, "roots.pem", p.rootPEM)
		})
		backendtest.Run(t, s, spiffeID)
	})

	t.Run("sign-verbatim", func(t *testing.T) {
		auth, _ := tokenFileAuth(t, signerToken(t))
		s := p.signer(t, auth, func(c *Config) { c.Mode = modeSignVerbatim })
		backendtest.Run(t, s, spiffeID)
		req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
		chain, err := s.Sign(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if eku := fmt.Sprint(chain[0].ExtKeyUsage); eku != fmt.Sprint([]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
			t.Errorf("sign-verbatim leaf EKU = %v, want server+client auth", chain[0].ExtKeyUsage)
		}
	})

	t.Run("hostile subjects, sign", func(t *testing.T) {
		s := p.signer(t, AuthConfig{Method: "token", Token: &TokenAuth{Token: v.RootToken}})
		backendtest.RunHostileSubjects(t, s, spiffeID)
	})

	t.Run("hostile subjects, sign-verbatim", func(t *testing.T) {
		s := p.signer(t, AuthConfig{Method: "token", Token: &TokenAuth{Token: v.RootToken}}, func(c *Config) { c.Mode = modeSignVerbatim })
		backendtest.RunHostileSubjects(t, s, spiffeID)
	})

	t.Run("what sign-verbatim itself copies", func(t *testing.T) {
		// Straight to Vault, past the backend's check: this is why the
		// backend refuses such CSRs before asking.
		for _, h := range append(backendtest.HostileSubjects(), serialNumberSubject()) {
			req := backendtest.NewRequestWithSubject(t, spiffeID, h.RawSubject, time.Hour)
			leaf := rawSign(t, p, "pki/sign-verbatim/istio", req)
			got, _ := dn.Valued(leaf.RawSubject)
			t.Logf("%s: sign-verbatim issued subject [%s]", h.Name, dn.Describe(got))
			if len(got) == 0 {
				t.Errorf("%s: sign-verbatim no longer copies the CSR's subject; docs/backends/vault.md says it does", h.Name)
			}
		}
		req := csrWithUsage(t, x509.KeyUsageDigitalSignature|x509.KeyUsageCertSign|x509.KeyUsageCRLSign)
		leaf := rawSign(t, p, "pki/sign-verbatim/istio", req)
		t.Logf("CSR asking keyCertSign|cRLSign: sign-verbatim issued key usage %v (key_usage sent: DigitalSignature,KeyEncipherment)", keyUsageNames(leaf.KeyUsage))
		if leaf.KeyUsage&x509.KeyUsageCertSign == 0 {
			t.Errorf("sign-verbatim no longer copies the CSR's key usage; docs/backends/vault.md says it does")
		}
	})

	t.Run("sign with a role that takes the subject from the CSR", func(t *testing.T) {
		// The settings docs/backends/vault.md says must stay off.
		role := spiffeRole("spiffe://*")
		role["use_csr_common_name"] = true
		role["allowed_serial_numbers"] = "*"
		role["allowed_user_ids"] = "*"
		if _, err := p.root.Logical().Write("pki/roles/copies", role); err != nil {
			t.Fatal(err)
		}
		s := p.signer(t, AuthConfig{Method: "token", Token: &TokenAuth{Token: v.RootToken}}, func(c *Config) { c.Role = "copies" })
		backendtest.RunHostileSubjects(t, s, spiffeID)
		for _, tc := range []struct {
			h    backendtest.HostileSubject
			want string
		}{
			{backendtest.HostileSubjects()[0], "use_csr_common_name"},
			{backendtest.HostileSubjects()[4], "allowed_user_ids"},
			{serialNumberSubject(), "allowed_serial_numbers"},
		} {
			req := backendtest.NewRequestWithSubject(t, spiffeID, tc.h.RawSubject, time.Hour)
			_, err := s.Sign(context.Background(), req)
			if !errors.Is(err, backends.ErrRefused) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: Sign = %v, want ErrRefused naming %s", tc.h.Name, err, tc.want)
			}
			t.Logf("%s: %v", tc.h.Name, err)
		}
	})

	t.Run("sign with the documented role: a CSR's serialNumber", func(t *testing.T) {
		s := p.signer(t, AuthConfig{Method: "token", Token: &TokenAuth{Token: v.RootToken}})
		req := backendtest.NewRequestWithSubject(t, spiffeID, serialNumberSubject().RawSubject, time.Hour)
		_, err := s.Sign(context.Background(), req)
		if !errors.Is(err, backends.ErrRefused) {
			t.Fatalf("Sign = %v, want Vault's refusal", err)
		}
		t.Logf("%v", err)
	})

	t.Run("serving certificate with DNS names", func(t *testing.T) {
		s := p.signer(t, AuthConfig{Method: "token", Token: &TokenAuth{Token: v.RootToken}})
		req, _ := backendtest.NewRequest(t, "spiffe://cluster.local/ns/istio-system/sa/meshca", time.Hour)
		req.CSR = csrWith(t, req.Template.URIs, []string{"meshca.istio-system.svc"})
		req.Template.DNSNames = []string{"meshca.istio-system.svc"}
		chain, err := s.Sign(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		backendtest.CheckIssued(t, s, req, chain)
	})

	t.Run("role refuses a URI outside its trust domain", func(t *testing.T) {
		s := p.signer(t, AuthConfig{Method: "token", Token: &TokenAuth{Token: v.RootToken}}, func(c *Config) { c.Role = "strict" })
		ok, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
		if _, err := s.Sign(context.Background(), ok); err != nil {
			t.Fatalf("strict role refused its own trust domain: %v", err)
		}
		req, _ := backendtest.NewRequest(t, "spiffe://evil.example/ns/default/sa/web", time.Hour)
		_, err := s.Sign(context.Background(), req)
		if !errors.Is(err, backends.ErrRefused) || !strings.Contains(err.Error(), "Vault answered HTTP 400") {
			t.Fatalf("Sign = %v, want ErrRefused with Vault's reason", err)
		}
		t.Logf("refusal as the broker reports it: %v", err)
	})

	t.Run("no permission on the sign path", func(t *testing.T) {
		tok := p.token(t, &vaultapi.TokenCreateRequest{Policies: []string{"default"}, TTL: "1h"})
		auth, _ := tokenFileAuth(t, tok)
		s := p.signer(t, auth, func(c *Config) { c.TrustAnchorsFile = backendtest.WriteFile(t, "roots.pem", p.rootPEM) })
		req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
		_, err := s.Sign(context.Background(), req)
		if !errors.Is(err, backends.ErrRefused) || !strings.Contains(err.Error(), "permission denied by Vault") {
			t.Fatalf("Sign = %v, want ErrRefused: permission denied by Vault", err)
		}
		t.Logf("refusal as the broker reports it: %v", err)
	})

	t.Run("token file rotated after the old token was revoked", func(t *testing.T) {
		old := signerToken(t)
		auth, file := tokenFileAuth(t, old)
		s := p.signer(t, auth)
		req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
		if _, err := s.Sign(context.Background(), req); err != nil {
			t.Fatal(err)
		}
		if err := p.root.Auth().Token().RevokeOrphan(old); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, []byte(signerToken(t)), 0o600); err != nil {
			t.Fatal(err)
		}
		chain, err := s.Sign(context.Background(), req)
		if err != nil {
			t.Fatalf("Sign after rotation = %v", err)
		}
		backendtest.CheckIssued(t, s, req, chain)
		if g := s.auth.current().gen; g != 2 {
			t.Errorf("login generation = %d, want 2 (one re-login)", g)
		}
	})

	t.Run("renewable token kept alive past its TTL", func(t *testing.T) {
		// Renewals at 2/3 of the TTL leave 2s of margin on a loaded machine.
		tok := p.token(t, &vaultapi.TokenCreateRequest{Policies: []string{"meshca-signer"}, TTL: "6s", ExplicitMaxTTL: "5m", Renewable: ptr(true)})
		auth, _ := tokenFileAuth(t, tok)
		s := p.signer(t, auth)
		time.Sleep(8 * time.Second)
		req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
		chain, err := s.Sign(context.Background(), req)
		if err != nil {
			t.Fatalf("Sign 8s into a 6s token = %v (not renewed?)", err)
		}
		backendtest.CheckIssued(t, s, req, chain)
		if g := s.auth.current().gen; g != 1 {
			t.Errorf("login generation = %d, want 1 (renewed, not replaced)", g)
		}
	})

	t.Run("approle", func(t *testing.T) {
		roleID, secretID := setupAppRole(t, p, "meshca", map[string]any{"token_ttl": "1h", "token_max_ttl": "4h"})
		s := p.signer(t, AuthConfig{Method: "approle", AppRole: &AppRoleAuth{RoleID: roleID, SecretIDFile: backendtest.WriteFile(t, "secret-id", []byte(secretID+"\n"))}})
		backendtest.Run(t, s, spiffeID)

		// Someone revokes the broker's token: the next call logs in again.
		if err := p.root.Auth().Token().RevokeOrphan(s.client.Token()); err != nil {
			t.Fatal(err)
		}
		req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
		chain, err := s.Sign(context.Background(), req)
		if err != nil {
			t.Fatalf("Sign after the token was revoked = %v", err)
		}
		backendtest.CheckIssued(t, s, req, chain)
		if g := s.auth.current().gen; g != 2 {
			t.Errorf("login generation = %d, want 2", g)
		}
	})

	t.Run("approle token replaced at its max TTL", func(t *testing.T) {
		roleID, secretID := setupAppRole(t, p, "short", map[string]any{"token_ttl": "3s", "token_max_ttl": "4s"})
		s := p.signer(t, AuthConfig{Method: "approle", AppRole: &AppRoleAuth{RoleID: roleID, SecretID: secretID}})
		time.Sleep(6 * time.Second)
		if g := s.auth.current().gen; g < 2 {
			t.Errorf("login generation = %d after the max TTL, want a new login", g)
		}
		req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
		chain, err := s.Sign(context.Background(), req)
		if err != nil {
			t.Fatalf("Sign = %v", err)
		}
		backendtest.CheckIssued(t, s, req, chain)
	})

	t.Run("approle with a wrong secret fails at startup", func(t *testing.T) {
		roleID, _ := setupAppRole(t, p, "wrong", nil)
		cfg := Config{Address: v.Addr, Role: "istio", Auth: AuthConfig{Method: "approle", AppRole: &AppRoleAuth{RoleID: roleID, SecretID: "not-it"}}}
		_, err := newSigner(context.Background(), cfg, backendtest.QuietLogger())
		if err == nil || backends.Retryable(err) {
			t.Fatalf("newSigner = %v, want a non-retryable error", err)
		}
		t.Logf("startup error: %v", err)
	})

	t.Run("paused: unavailable within the timeout, then recovery", func(t *testing.T) {
		s := p.signer(t, AuthConfig{Method: "token", Token: &TokenAuth{Token: v.RootToken}}, func(c *Config) { c.Timeout.Duration = 500 * time.Millisecond })
		req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
		if _, err := s.Sign(context.Background(), req); err != nil {
			t.Fatal(err)
		}
		v.Pause(t)
		start := time.Now()
		_, err := s.Sign(context.Background(), req)
		elapsed := time.Since(start)
		v.Resume(t)
		if !errors.Is(err, backends.ErrUnavailable) {
			t.Fatalf("Sign against a frozen Vault = %v, want ErrUnavailable", err)
		}
		if elapsed > 5*time.Second {
			t.Errorf("Sign took %v with a 500ms timeout", elapsed)
		}
		t.Logf("while frozen: %v", err)
		signEventually(t, s, req, true)
	})

	// Last: a dev-mode Vault forgets everything when stopped.
	t.Run("stopped: unavailable, then recovery after restart", func(t *testing.T) {
		s := p.signer(t, AuthConfig{Method: "token", Token: &TokenAuth{Token: v.RootToken}})
		req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
		v.Stop()
		_, err := s.Sign(context.Background(), req)
		if !errors.Is(err, backends.ErrUnavailable) {
			t.Fatalf("Sign against a stopped Vault = %v, want ErrUnavailable", err)
		}
		t.Logf("while stopped: %v", err)

		// A broker starting during the outage comes up and signs later.
		late, err := newSigner(context.Background(), Config{Address: v.Addr, Role: "istio",
			Auth: AuthConfig{Method: "token", Token: &TokenAuth{Token: v.RootToken}}}, backendtest.QuietLogger())
		if err != nil {
			t.Fatalf("newSigner during the outage = %v, want a signer that connects later", err)
		}
		defer late.Close()

		v.Start(t)
		setupVault(t, v) // new state, new root
		signEventually(t, s, req, false)
		signEventually(t, late, req, true)
	})
}

func setupAppRole(t testing.TB, p *vaultPKI, name string, params map[string]any) (roleID, secretID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := p.root
	auths, err := c.Sys().ListAuthWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := auths["approle/"]; !ok {
		if err := c.Sys().EnableAuthWithOptionsWithContext(ctx, "approle", &vaultapi.EnableAuthOptions{Type: "approle"}); err != nil {
			t.Fatal(err)
		}
	}
	role := map[string]any{"token_policies": "meshca-signer"}
	for k, v := range params {
		role[k] = v
	}
	if _, err := c.Logical().WriteWithContext(ctx, "auth/approle/role/"+name, role); err != nil {
		t.Fatal(err)
	}
	sec, err := c.Logical().ReadWithContext(ctx, "auth/approle/role/"+name+"/role-id")
	if err != nil {
		t.Fatal(err)
	}
	roleID = sec.Data["role_id"].(string)
	sec, err = c.Logical().WriteWithContext(ctx, "auth/approle/role/"+name+"/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	return roleID, sec.Data["secret_id"].(string)
}

// TestVaultKubernetesAuth logs the broker in with its own service-account
// token, reviewed by Vault against a real kube-apiserver.
func TestVaultKubernetesAuth(t *testing.T) {
	testenv.Tool(t, "vault")
	k := testenv.StartKube(t)
	v := testenv.StartVault(t)
	p := setupVault(t, v)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// The reviewer: an account allowed to call TokenReview, whose token
	// Vault uses to check the broker's.
	k.CreateNamespace(t, "vault-auth")
	k.CreateServiceAccount(t, "vault-auth", "vault-reviewer")
	_, err := k.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "vault-reviewer-auth-delegator"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:auth-delegator"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "vault-reviewer", Namespace: "vault-auth"}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	reviewerJWT, err := k.Token(ctx, "vault-auth", "vault-reviewer", nil, time.Hour, "")
	if err != nil {
		t.Fatal(err)
	}
	// The broker's own account and a stranger.
	k.CreateNamespace(t, "istio-system")
	k.CreateServiceAccount(t, "istio-system", "meshca-broker")
	k.CreateServiceAccount(t, "istio-system", "someone-else")

	if err := p.root.Sys().EnableAuthWithOptionsWithContext(ctx, "kubernetes", &vaultapi.EnableAuthOptions{Type: "kubernetes"}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.root.Logical().WriteWithContext(ctx, "auth/kubernetes/config", map[string]any{
		"kubernetes_host":      k.URL,
		"kubernetes_ca_cert":   string(k.CAPEM),
		"token_reviewer_jwt":   reviewerJWT,
		"disable_local_ca_jwt": true,
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.root.Logical().WriteWithContext(ctx, "auth/kubernetes/role/meshca-broker", map[string]any{
		"bound_service_account_names":      "meshca-broker",
		"bound_service_account_namespaces": "istio-system",
		"audience":                         "vault",
		"token_policies":                   "meshca-signer",
		"token_ttl":                        "1h",
	}); err != nil {
		t.Fatal(err)
	}
	brokerToken := func(sa string) string {
		tok, err := k.Token(ctx, "istio-system", sa, []string{"vault"}, time.Hour, "")
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	tokenFile := backendtest.WriteFile(t, "sa-token", []byte(brokerToken("meshca-broker")))
	auth := AuthConfig{Method: "kubernetes", Kubernetes: &KubernetesAuth{Role: "meshca-broker", TokenFile: tokenFile}}

	s := p.signer(t, auth)
	backendtest.Run(t, s, spiffeID)

	t.Run("re-login reads the rotated service-account token", func(t *testing.T) {
		if err := os.WriteFile(tokenFile, []byte(brokerToken("meshca-broker")), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := p.root.Auth().Token().RevokeOrphan(s.client.Token()); err != nil {
			t.Fatal(err)
		}
		req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
		chain, err := s.Sign(context.Background(), req)
		if err != nil {
			t.Fatalf("Sign after the Vault token was revoked = %v", err)
		}
		backendtest.CheckIssued(t, s, req, chain)
	})

	t.Run("a token for another audience is refused", func(t *testing.T) {
		tok, err := k.Token(ctx, "istio-system", "meshca-broker", []string{testenv.IstioCAAudience}, time.Hour, "")
		if err != nil {
			t.Fatal(err)
		}
		wrongAud := AuthConfig{Method: "kubernetes", Kubernetes: &KubernetesAuth{Role: "meshca-broker",
			TokenFile: backendtest.WriteFile(t, "istio-ca-token", []byte(tok))}}
		_, err = newSigner(context.Background(), Config{Address: v.Addr, Role: "istio", Auth: wrongAud}, backendtest.QuietLogger())
		if err == nil || backends.Retryable(err) {
			t.Fatalf("newSigner = %v, want a non-retryable refusal", err)
		}
		t.Logf("startup error: %v", err)
	})

	t.Run("another service account is refused at startup", func(t *testing.T) {
		other := AuthConfig{Method: "kubernetes", Kubernetes: &KubernetesAuth{Role: "meshca-broker",
			TokenFile: backendtest.WriteFile(t, "other-token", []byte(brokerToken("someone-else")))}}
		_, err := newSigner(context.Background(), Config{Address: v.Addr, Role: "istio", Auth: other}, backendtest.QuietLogger())
		if err == nil || backends.Retryable(err) {
			t.Fatalf("newSigner = %v, want a non-retryable refusal", err)
		}
		t.Logf("startup error: %v", err)
	})
}

// signEventually signs through the broker's retry policy, as the server
// does. check runs the conformance check (anchors must be current).
func signEventually(t *testing.T, s *Signer, req *backends.Request, check bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var chain []*x509.Certificate
	err := backends.RetryPolicy{Attempts: 20}.Do(ctx, func(ctx context.Context) error {
		var err error
		chain, err = s.Sign(ctx, req)
		return err
	})
	if err != nil {
		t.Fatalf("no recovery: %v", err)
	}
	if check {
		backendtest.CheckIssued(t, s, req, chain)
	} else if len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != req.Template.URIs[0].String() {
		t.Fatalf("leaf URIs = %v", chain[0].URIs)
	}
}

// serialNumberSubject is a CSR subject Vault's sign takes by default
// (serial_number_source json-csr) when the role's allowed_serial_numbers
// lets it.
func serialNumberSubject() backendtest.HostileSubject {
	raw, err := asn1.Marshal(pkix.Name{SerialNumber: "42"}.ToRDNSequence())
	if err != nil {
		panic(err)
	}
	return backendtest.HostileSubject{Name: "serialNumber", RawSubject: raw}
}

// csrWithUsage is an approved request whose CSR asks for key usages.
func csrWithUsage(t testing.TB, ku x509.KeyUsage) *backends.Request {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	req := backendtest.NewRequestForKey(t, key, spiffeID, time.Hour)
	req.CSR = backendtest.CSR(t, key, &x509.CertificateRequest{URIs: req.Template.URIs, ExtraExtensions: []pkix.Extension{kuExt(t, ku)}})
	return req
}

// rawSign sends the backend's request body to path with the root token,
// bypassing the backend's checks, and returns the leaf.
func rawSign(t testing.TB, p *vaultPKI, path string, req *backends.Request) *x509.Certificate {
	t.Helper()
	s := &Signer{cfg: Config{Mode: modeSignVerbatim}}
	data, err := s.signData(req, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	sec, err := p.root.Logical().Write(path, data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	chain, err := chainFromSecret(sec)
	if err != nil {
		t.Fatal(err)
	}
	return chain[0]
}

func csrWith(t testing.TB, uris []*url.URL, dns []string) *x509.CertificateRequest {
	t.Helper()
	return backendtest.CSR(t, nil, &x509.CertificateRequest{URIs: uris, DNSNames: dns})
}

func pemDER(t testing.TB, p []byte) []byte {
	t.Helper()
	certs, err := backends.ParseCertificates(p)
	if err != nil || len(certs) == 0 {
		t.Fatalf("parse PEM: %v", err)
	}
	return certs[0].Raw
}

func ptr[T any](v T) *T { return &v }

// BenchmarkSign compares the backend's Sign (request building, chain
// parsing and de-duplication, error mapping) with a bare API client
// Logical().Write of the same body to the same path. ratio = backend / raw.
func BenchmarkSign(b *testing.B) {
	v := testenv.StartVault(b)
	p := setupVault(b, v)
	s := p.signer(b, AuthConfig{Method: "token", Token: &TokenAuth{Token: v.RootToken}})
	raw := v.Client(b)
	req, _ := backendtest.NewRequest(b, spiffeID, time.Hour)
	ctx := context.Background()
	data, err := s.signData(req, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	// Warm both connections.
	if _, err := s.Sign(ctx, req); err != nil {
		b.Fatal(err)
	}
	if _, err := raw.Logical().WriteWithContext(ctx, "pki/sign/istio", data); err != nil {
		b.Fatal(err)
	}
	b.Run("backend-vs-raw", func(b *testing.B) {
		var backendTime, rawTime time.Duration
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			if _, err := s.Sign(ctx, req); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			if _, err := raw.Logical().WriteWithContext(ctx, "pki/sign/istio", data); err != nil {
				b.Fatal(err)
			}
			backendTime += t1.Sub(t0)
			rawTime += time.Since(t1)
		}
		b.ReportMetric(float64(backendTime.Microseconds())/float64(b.N)/1000, "backend-ms/sign")
		b.ReportMetric(float64(rawTime.Microseconds())/float64(b.N)/1000, "raw-ms/sign")
		b.ReportMetric(float64(backendTime)/float64(rawTime), "ratio")
	})
}
