package testenv_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/broker/integration/testenv"
)

func spiffeCSR(t *testing.T, id string) ([]byte, *url.URL) {
	t.Helper()
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), u
}

func parseCert(t *testing.T, p []byte) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(p)
	if blk == nil {
		t.Fatalf("no PEM in %q", p)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func checkSPIFFELeaf(t *testing.T, c *x509.Certificate, id *url.URL) {
	t.Helper()
	if len(c.URIs) != 1 || c.URIs[0].String() != id.String() {
		t.Errorf("URIs = %v, want %s", c.URIs, id)
	}
	if c.Subject.String() != "" {
		t.Errorf("subject = %q, want empty", c.Subject)
	}
	hasEKU := func(want x509.ExtKeyUsage) bool {
		for _, e := range c.ExtKeyUsage {
			if e == want {
				return true
			}
		}
		return false
	}
	if !hasEKU(x509.ExtKeyUsageServerAuth) || !hasEKU(x509.ExtKeyUsageClientAuth) {
		t.Errorf("ext key usage = %v", c.ExtKeyUsage)
	}
	if c.KeyUsage&x509.KeyUsageDigitalSignature == 0 || c.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
		t.Errorf("key usage = %b", c.KeyUsage)
	}
}

func TestVault(t *testing.T) {
	t.Parallel()
	v := testenv.StartVault(t)
	resp, err := http.Get(v.Addr + "/v1/sys/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("health %d", resp.StatusCode)
	}

	pki := v.EnablePKI(t, testenv.VaultPKIOptions{TrustDomain: "cluster.local"})
	csr, id := spiffeCSR(t, "spiffe://cluster.local/ns/default/sa/app")
	c := v.Client(t)
	sec, err := c.Logical().Write(pki.Mount+"/sign/"+pki.Role, map[string]any{"csr": string(csr), "ttl": "1h"})
	if err != nil {
		t.Fatal(err)
	}
	leaf := parseCert(t, []byte(sec.Data["certificate"].(string)))
	checkSPIFFELeaf(t, leaf, id)
	root := parseCert(t, pki.RootPEM)
	if err := leaf.CheckSignatureFrom(root); err != nil {
		t.Fatal(err)
	}
	// Other trust domains are refused.
	bad, _ := spiffeCSR(t, "spiffe://evil.example/ns/default/sa/app")
	if _, err := c.Logical().Write(pki.Mount+"/sign/"+pki.Role, map[string]any{"csr": string(bad)}); err == nil {
		t.Error("role signed a foreign trust domain")
	}

	// Pause: requests hang; Resume: they work again, state kept.
	v.Pause(t)
	hc := &http.Client{Timeout: 500 * time.Millisecond}
	if _, err := hc.Get(v.Addr + "/v1/sys/health"); err == nil {
		t.Error("paused vault answered")
	}
	v.Resume(t)
	if _, err := c.Logical().Write(pki.Mount+"/sign/"+pki.Role, map[string]any{"csr": string(csr)}); err != nil {
		t.Fatalf("after resume: %v", err)
	}
	// Stop: refused; Start: healthy again but empty (dev mode).
	v.Stop()
	if _, err := hc.Get(v.Addr + "/v1/sys/health"); err == nil {
		t.Error("stopped vault answered")
	}
	v.Start(t)
	if _, err := c.Logical().Write(pki.Mount+"/sign/"+pki.Role, map[string]any{"csr": string(csr)}); err == nil {
		t.Error("dev-mode vault kept its PKI mount across a restart")
	}
}

func TestStepCA(t *testing.T) {
	t.Parallel()
	s := testenv.StartStepCA(t)
	if s.ProvisionerKID == "" || s.ProvisionerEncryptedKey == "" || !bytes.Contains(s.ProvisionerKeyJSON, []byte(`"d"`)) {
		t.Fatalf("provisioner details missing: kid=%q key=%d bytes", s.ProvisionerKID, len(s.ProvisionerKeyJSON))
	}
	resp, err := s.HTTPClient().Get(s.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	sign := func(csr []byte, ott string) (*http.Response, map[string]any) {
		body, _ := json.Marshal(map[string]string{"csr": string(csr), "ott": ott})
		resp, err := s.HTTPClient().Post(s.URL+"/1.0/sign", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp, out
	}

	// Signing over the HTTP API (what a client library does).
	csr, id := spiffeCSR(t, "spiffe://cluster.local/ns/default/sa/app")
	resp, out := sign(csr, s.Token(t, id.String(), id.String()))
	if resp.StatusCode != 201 {
		t.Fatalf("sign: %d %v", resp.StatusCode, out)
	}
	leaf := parseCert(t, []byte(out["crt"].(string)))
	checkSPIFFELeaf(t, leaf, id)
	inter := parseCert(t, s.IntermediatePEM)
	if err := leaf.CheckSignatureFrom(inter); err != nil {
		t.Fatal(err)
	}

	// The step CLI round trip (the CLI makes the key and CSR itself).
	dir := t.TempDir()
	crtFile, keyFile := filepath.Join(dir, "crt.pem"), filepath.Join(dir, "key.pem")
	id2 := "spiffe://cluster.local/ns/other/sa/cli"
	if b, err := s.Step(context.Background(), "ca", "certificate", id2, crtFile, keyFile, "--token="+s.Token(t, id2),
		"--ca-url="+s.URL, "--root="+s.RootFile, "--force"); err != nil {
		t.Fatalf("step ca certificate: %v\n%s", err, b)
	}
	crt, _ := os.ReadFile(crtFile)
	u2, _ := url.Parse(id2)
	checkSPIFFELeaf(t, parseCert(t, crt), u2)

	// SANs must match the token.
	resp, out = sign(csr, s.Token(t, id.String(), "spiffe://cluster.local/ns/x/sa/y"))
	if resp.StatusCode < 400 {
		t.Fatalf("mismatched SANs signed: %v", out)
	}

	// Pause/Resume and Restart keep the CA.
	s.Pause(t)
	hc := s.HTTPClient()
	hc.Timeout = 500 * time.Millisecond
	if _, err := hc.Get(s.URL + "/health"); err == nil {
		t.Error("paused step-ca answered")
	}
	s.Resume(t)
	t0 := time.Now()
	s.Restart(t)
	t.Logf("restart took %v", time.Since(t0))
	resp, out = sign(csr, s.Token(t, id.String()))
	if resp.StatusCode != 201 || !strings.Contains(out["crt"].(string), "CERTIFICATE") {
		t.Fatalf("sign after restart: %d %v", resp.StatusCode, out)
	}
}
