package testenv

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
)

// Vault is a Vault server in dev mode on 127.0.0.1 (in-memory storage,
// unsealed, root token RootToken). Dev mode keeps no state across Restart:
// re-run any setup (EnablePKI...) after it. Pause/Resume (SIGSTOP/SIGCONT)
// simulate an outage that keeps state: connections hang instead of being refused.
type Vault struct {
	// Addr is http://127.0.0.1:PORT.
	Addr      string
	RootToken string
	proc      *process
	port      int
	home      string
}

// StartVault starts `vault server -dev` (binary "vault" from ToolsDir) and
// waits until /v1/sys/health answers 200. It is stopped when the test ends.
func StartVault(t testing.TB) *Vault {
	t.Helper()
	bin := Tool(t, "vault")
	v := &Vault{RootToken: "meshca-root", home: t.TempDir()}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		// Dev mode also binds its cluster listener on PORT+1.
		v.port = freePortPair(t)
		v.Addr = fmt.Sprintf("http://127.0.0.1:%d", v.port)
		v.proc = newProcess(t, fmt.Sprintf("vault-%d", attempt), bin, []string{
			"server", "-dev",
			"-dev-root-token-id=" + v.RootToken,
			"-dev-listen-address=127.0.0.1:" + itoa(v.port),
			"-dev-no-store-token",
			"-log-level=info",
		}, []string{"HOME=" + v.home, "VAULT_ADDR=", "VAULT_TOKEN=", "SKIP_SETCAP=1", "VAULT_DISABLE_MLOCK=true"}, v.home)
		if lastErr = v.startAndWait(); lastErr == nil {
			return v
		}
		v.proc.stop()
		if !v.proc.addrInUse() {
			break
		}
	}
	t.Fatalf("testenv: vault: %v", lastErr)
	return nil
}

// freePortPair returns a port P such that P and P+1 were both free.
func freePortPair(t testing.TB) int {
	t.Helper()
	for i := 0; i < 50; i++ {
		p := FreePort(t)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+1))
		if err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("testenv: no free port pair")
	return 0
}

func (v *Vault) startAndWait() error {
	if err := v.proc.start(); err != nil {
		return err
	}
	return v.proc.waitReady(60*time.Second, v.health)
}

func (v *Vault) health(ctx context.Context) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, v.Addr+"/v1/sys/health", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("vault health: %d", resp.StatusCode)
	}
	return nil
}

// Client returns a Vault API client for Addr authenticated with the root token.
func (v *Vault) Client(t testing.TB) *vaultapi.Client {
	t.Helper()
	cfg := vaultapi.DefaultConfig()
	cfg.Address = v.Addr
	cfg.MaxRetries = 0
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		t.Fatalf("testenv: vault client: %v", err)
	}
	c.SetToken(v.RootToken)
	return c
}

// Stop stops Vault (also done automatically at the end of the test).
func (v *Vault) Stop() { v.proc.stop() }

// Start starts a stopped Vault again on the same address and root token,
// with EMPTY state (dev mode), and waits until it is healthy.
func (v *Vault) Start(t testing.TB) {
	t.Helper()
	if err := v.startAndWait(); err != nil {
		t.Fatalf("testenv: vault restart: %v", err)
	}
}

// Restart is Stop then Start (state is lost: dev mode).
func (v *Vault) Restart(t testing.TB) {
	t.Helper()
	v.Stop()
	v.Start(t)
}

// Pause freezes the Vault process (SIGSTOP): requests hang until Resume.
func (v *Vault) Pause(t testing.TB) {
	t.Helper()
	if err := v.proc.pause(); err != nil {
		t.Fatalf("testenv: vault pause: %v", err)
	}
}

// Resume continues a paused Vault (SIGCONT).
func (v *Vault) Resume(t testing.TB) {
	t.Helper()
	if err := v.proc.resume(); err != nil {
		t.Fatalf("testenv: vault resume: %v", err)
	}
}

// Log returns Vault's output so far.
func (v *Vault) Log() string { return v.proc.log() }

// VaultPKIOptions configures EnablePKI.
type VaultPKIOptions struct {
	Mount string // default "pki"
	Role  string // default "istio"
	// TrustDomain restricts the role's URI SANs to spiffe://<TrustDomain>/*
	// (default: any spiffe://* URI).
	TrustDomain string
	MaxTTL      time.Duration // default 720h
	// RoleParams are extra/overriding role parameters.
	RoleParams map[string]any
}

// VaultPKI is a PKI secrets engine set up by EnablePKI.
type VaultPKI struct {
	Mount, Role string
	RootPEM     []byte
}

// EnablePKI mounts a PKI secrets engine, generates an internal root CA and
// creates a role for SPIFFE workload certificates (URI SANs from the CSR,
// no common name required, server+client auth, key usages DigitalSignature
// and KeyEncipherment). Sign with <Mount>/sign/<Role>.
func (v *Vault) EnablePKI(t testing.TB, o VaultPKIOptions) *VaultPKI {
	t.Helper()
	if o.Mount == "" {
		o.Mount = "pki"
	}
	if o.Role == "" {
		o.Role = "istio"
	}
	if o.MaxTTL == 0 {
		o.MaxTTL = 720 * time.Hour
	}
	c := v.Client(t)
	ctx, cancel := ctxT()
	defer cancel()
	if err := c.Sys().MountWithContext(ctx, o.Mount, &vaultapi.MountInput{
		Type:   "pki",
		Config: vaultapi.MountConfigInput{MaxLeaseTTL: o.MaxTTL.String()},
	}); err != nil {
		t.Fatalf("testenv: vault mount pki: %v", err)
	}
	sec, err := c.Logical().WriteWithContext(ctx, o.Mount+"/root/generate/internal", map[string]any{
		"common_name": "meshca test root (" + o.Mount + ")",
		"ttl":         o.MaxTTL.String(),
		"key_type":    "ec",
		"key_bits":    256,
	})
	if err != nil {
		t.Fatalf("testenv: vault generate root: %v", err)
	}
	rootPEM, _ := sec.Data["certificate"].(string)
	uris := "spiffe://*"
	if o.TrustDomain != "" {
		uris = "spiffe://" + o.TrustDomain + "/*"
	}
	role := map[string]any{
		"allow_any_name":              true,
		"enforce_hostnames":           false,
		"require_cn":                  false,
		"use_csr_common_name":         false,
		"use_csr_sans":                true,
		"allowed_uri_sans":            uris,
		"allowed_uri_sans_template":   false,
		"allow_ip_sans":               true,
		"server_flag":                 true,
		"client_flag":                 true,
		"key_usage":                   []string{"DigitalSignature", "KeyEncipherment"},
		"key_type":                    "any",
		"max_ttl":                     o.MaxTTL.String(),
		"ttl":                         "24h",
		"no_store":                    true,
		"generate_lease":              false,
		"allow_wildcard_certificates": false,
	}
	for k, val := range o.RoleParams {
		role[k] = val
	}
	if _, err := c.Logical().WriteWithContext(ctx, o.Mount+"/roles/"+o.Role, role); err != nil {
		t.Fatalf("testenv: vault pki role: %v", err)
	}
	return &VaultPKI{Mount: o.Mount, Role: o.Role, RootPEM: []byte(rootPEM)}
}
