package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/meshca/broker/caclient"
	"github.com/meshca/broker/config"
	"github.com/meshca/broker/devissuer"
	"github.com/meshca/broker/dn"
	"github.com/meshca/broker/integration/testenv"
)

// The backend pages' PKI-side setup, run as the pages write it.
//
// A page marks each fenced block meant to be run with an HTML comment on
// the line before it:
//
//	<!-- test: vault-role -->
//	```shell
//	vault write pki_int/roles/istio-workloads ...
//	```
//
// The test runs the block's text with `sh -e` against a real server, in an
// environment that points the CLI at it (VAULT_ADDR and VAULT_TOKEN, or
// STEPPATH) with the tools directory first in PATH, then starts the broker
// on that backend with the default tls.dnsNames and gets a workload
// certificate through it. Nothing in a block is substituted; what a page
// takes for granted (a PKI mount holding a CA, a password file) the test
// creates first, in the open below.

// testBlock is a marked fenced block: the marker's name and the block's text.
var testBlock = regexp.MustCompile("(?s)<!-- test: ([a-z0-9-]+) -->[ \t]*\n```[a-z]*\n(.*?)```")

// pageBlocks returns a page's marked blocks by name, failing when one of
// want is missing (a marker removed or renamed in the page).
func pageBlocks(t *testing.T, page string, want ...string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(page)
	if err != nil {
		t.Fatal(err)
	}
	blocks := map[string]string{}
	for _, m := range testBlock.FindAllStringSubmatch(string(b), -1) {
		if _, dup := blocks[m[1]]; dup {
			t.Fatalf("%s: two blocks marked %q", page, m[1])
		}
		blocks[m[1]] = m[2]
	}
	for _, name := range want {
		if blocks[name] == "" {
			t.Fatalf("%s: no fenced block marked <!-- test: %s -->", page, name)
		}
	}
	return blocks
}

// runBlock runs a page's block with sh -e in dir.
func runBlock(t testing.TB, name, script, dir string, env []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-e", "-c", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PATH="+testenv.ToolsDir()+string(os.PathListSeparator)+os.Getenv("PATH"))
	cmd.Env = append(cmd.Env, env...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the page's block %q failed: %v\n--- block:\n%s--- output:\n%s", name, err, script, out)
	}
	t.Logf("block %q ran in %v:\n%s", name, time.Since(start).Round(time.Millisecond), out)
}

// TestDocPageVault runs docs/backends/vault.md's policy and role commands
// with the real vault CLI against a dev Vault, then starts the broker with
// a token holding only that policy.
func TestDocPageVault(t *testing.T) {
	testenvRequired(t)
	blocks := pageBlocks(t, "../docs/backends/vault.md", "vault-policy", "vault-role")
	v := testenv.StartVault(t)

	// What the page takes for granted: a PKI mount pki_int holding a CA.
	c := v.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Sys().MountWithContext(ctx, "pki_int", &vaultapi.MountInput{Type: "pki"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Logical().WriteWithContext(ctx, "pki_int/root/generate/internal", map[string]any{
		"common_name": "meshca doc-page test CA", "ttl": "720h", "key_type": "ec", "key_bits": 256}); err != nil {
		t.Fatal(err)
	}

	// The page's commands, as written.
	dir := t.TempDir()
	env := []string{"VAULT_ADDR=" + v.Addr, "VAULT_TOKEN=" + v.RootToken, "HOME=" + dir}
	runBlock(t, "vault-policy", blocks["vault-policy"], dir, env)
	runBlock(t, "vault-role", blocks["vault-role"], dir, env)

	// The broker logs in with a token holding the page's policy (and
	// Vault's default one, as the page says).
	sec, err := c.Auth().Token().CreateWithContext(ctx, &vaultapi.TokenCreateRequest{Policies: []string{"meshca-broker"}, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	checkBrokerOnDocPageBackend(t, config.Backend{Type: "vault", Settings: backendSettings(t, map[string]any{
		"address": v.Addr,
		"mount":   "pki_int",         // as on the page
		"role":    "istio-workloads", // as on the page
		"auth":    map[string]any{"method": "token", "token": map[string]any{"token": sec.Auth.ClientToken}},
	})})
}

// TestDocPageStepCA runs docs/backends/step-ca.md's provisioner setup with
// the real step CLI on a freshly initialised CA (whose own provisioner is
// named "admin", so the page's "meshca" is new), then starts step-ca and the
// broker with the page's provisioner and password file.
func TestDocPageStepCA(t *testing.T) {
	testenvRequired(t)
	blocks := pageBlocks(t, "../docs/backends/step-ca.md", "stepca-provisioner")
	dir := t.TempDir()
	// What the page takes for granted: the password file it names.
	passwordFile := filepath.Join(dir, "provisioner-password.txt")
	if err := os.WriteFile(passwordFile, []byte("doc-page-provisioner-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sca := testenv.StartStepCAWith(t, testenv.StepCAOptions{
		Provisioner: "admin",
		Bare:        true,
		// Before step-ca starts, which is what the page's restart is for.
		BeforeStart: func(t testing.TB, s *testenv.StepCA) {
			runBlock(t, "stepca-provisioner", blocks["stepca-provisioner"], dir, s.Env())
		},
	})
	checkBrokerOnDocPageBackend(t, config.Backend{Type: "stepca", Settings: backendSettings(t, map[string]any{
		"url":          sca.URL,
		"rootFile":     sca.RootFile,
		"provisioner":  "meshca", // as on the page
		"passwordFile": passwordFile,
	})})
}

// checkBrokerOnDocPageBackend starts the broker on backend with the
// default tls.dnsNames, checks that its serving certificate verifies for
// every one of them, and gets a workload certificate (RSA-2048, the Istio
// agent's default key) through it.
func checkBrokerOnDocPageBackend(t *testing.T, backend config.Backend) {
	t.Helper()
	iss, err := devissuer.New(devissuer.DefaultIssuer)
	if err != nil {
		t.Fatal(err)
	}
	jwksFile := filepath.Join(t.TempDir(), "jwks.json")
	if err := iss.WriteJWKS(jwksFile); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	b := startBroker(t, nil, func(c *config.Config) {
		if len(c.TLS.DNSNames) != 0 {
			t.Fatal("tls.dnsNames set; this test is about the defaults")
		}
		c.Backend = backend
		c.Authn.JWKS = []config.JWKS{{Issuer: iss.URL, File: jwksFile, ClusterID: "Kubernetes"}}
	})
	t.Logf("broker started on %s in %v", backend.Type, time.Since(start).Round(time.Millisecond))

	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootsPEM(t, b)) {
		t.Fatal("the broker's roots do not parse")
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", b.Addr(),
		&tls.Config{RootCAs: roots, ServerName: caclient.DefaultServerName, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatalf("TLS to the broker as %s: %v", caclient.DefaultServerName, err)
	}
	peer := conn.ConnectionState().PeerCertificates
	conn.Close()
	inter := x509.NewCertPool()
	for _, c := range peer[1:] {
		inter.AddCert(c)
	}
	for _, name := range config.DefaultDNSNames {
		if _, err := peer[0].Verify(x509.VerifyOptions{DNSName: name, Roots: roots, Intermediates: inter}); err != nil {
			t.Errorf("serving certificate does not verify for default name %s: %v", name, err)
		}
	}
	if got, want := slices.Sorted(slices.Values(peer[0].DNSNames)), slices.Sorted(slices.Values(config.DefaultDNSNames)); !slices.Equal(got, want) {
		t.Errorf("serving certificate names %v, want the defaults %v", got, want)
	}

	const id = "spiffe://cluster.local/ns/docs/sa/reader"
	tok, err := iss.Token("docs", "reader", []string{"istio-ca"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key, err := caclient.NewKey(false)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, err := dial(t, b, nil).CreateCertificate(ctx, caclient.Request{Key: key, SPIFFEID: id, Token: tok, TTL: time.Hour})
	if err != nil {
		t.Fatalf("CreateCertificate through the broker on %s: %v", backend.Type, err)
	}
	leaf := got.Chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id {
		t.Errorf("workload certificate URIs = %v, want [%s]", leaf.URIs, id)
	}
	if valued, err := dn.Valued(leaf.RawSubject); err != nil || len(valued) != 0 {
		t.Errorf("workload certificate subject [%s] (%v), want empty", dn.Describe(valued), err)
	}
	inter = x509.NewCertPool()
	for _, c := range got.Chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("workload chain does not verify to the broker's roots: %v", err)
	}
	t.Logf("workload certificate for %s, %d certificates in the chain, valid until %s", id, len(got.Chain), leaf.NotAfter.UTC().Format(time.RFC3339))
}
