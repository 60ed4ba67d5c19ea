package testenv

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// StepCAProvisioner is the name of the JWK provisioner StartStepCA creates.
const StepCAProvisioner = "meshca"

// StepCAX509Template is the provisioner's options.x509 template: SPIFFE-style
// leaf certificates with an empty subject, the token's SANs (which must equal
// the CSR's), key usages digitalSignature+keyEncipherment and extended key
// usages serverAuth+clientAuth.
const StepCAX509Template = `{
	"subject": {},
	"sans": {{ toJson .SANs }},
	"keyUsage": ["digitalSignature", "keyEncipherment"],
	"extKeyUsage": ["serverAuth", "clientAuth"]
}
`

// StepCA is a standalone step-ca on 127.0.0.1 with one JWK provisioner
// (StepCAProvisioner) using StepCAX509Template, or as StepCAOptions say.
// Its state (badger DB) lives in StepPath and survives Restart.
type StepCA struct {
	// URL is https://127.0.0.1:PORT.
	URL string
	// RootPEM / RootFile: the CA's root certificate (also its TLS trust anchor).
	RootPEM  []byte
	RootFile string
	// IntermediatePEM is the intermediate that signs leaves.
	IntermediatePEM []byte
	// Provisioner is the JWK provisioner's name; ProvisionerKID its key id.
	Provisioner    string
	ProvisionerKID string
	// Password decrypts the provisioner key; PasswordFile holds it.
	Password     string
	PasswordFile string
	// ProvisionerEncryptedKey is the provisioner's JWE-encrypted private JWK
	// (compact serialization, as in ca.json); ProvisionerKeyFile holds it.
	ProvisionerEncryptedKey string
	ProvisionerKeyFile      string
	// ProvisionerKeyJSON is the decrypted private JWK (JSON).
	ProvisionerKeyJSON []byte
	// StepPath is the STEPPATH (config/ca.json, certs/, secrets/, db/).
	StepPath string

	stepBin string
	proc    *process
}

// StartStepCA initialises a CA with `step ca init` (non-interactive,
// standalone), installs the SPIFFE template on its JWK provisioner, starts
// step-ca (binaries "step" and "step-ca" from ToolsDir) and waits for /health.
func StartStepCA(t testing.TB) *StepCA {
	t.Helper()
	return StartStepCAWith(t, StepCAOptions{})
}

// StepCAOptions changes what StartStepCAWith sets up.
type StepCAOptions struct {
	// Provisioner names the JWK provisioner `step ca init` creates (default
	// StepCAProvisioner).
	Provisioner string
	// Bare leaves that provisioner as `step ca init` wrote it: step-ca's
	// default x509 template (the token's subject becomes the CN) and
	// default claims.
	Bare bool
	// BeforeStart, if set, runs after `step ca init` (and the template and
	// claims, unless Bare) and before step-ca starts, e.g. to run
	// `step ca provisioner add` with Env. It runs again if the start is
	// retried on a port clash, on a fresh StepPath.
	BeforeStart func(t testing.TB, s *StepCA)
}

// StartStepCAWith is StartStepCA with options.
func StartStepCAWith(t testing.TB, o StepCAOptions) *StepCA {
	t.Helper()
	stepBin := Tool(t, "step")
	caBin := Tool(t, "step-ca")
	dir := t.TempDir()
	if o.Provisioner == "" {
		o.Provisioner = StepCAProvisioner
	}
	s := &StepCA{
		StepPath:    filepath.Join(dir, "step"),
		Provisioner: o.Provisioner,
		Password:    "meshca-provisioner-password",
		stepBin:     stepBin,
	}
	s.PasswordFile = writeFile(t, dir, "provisioner-password", []byte(s.Password))
	caPasswordFile := writeFile(t, dir, "ca-password", []byte("meshca-ca-key-password"))
	templateFile := writeFile(t, dir, "x509-spiffe.tpl", []byte(StepCAX509Template))

	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port := FreePort(t)
		s.URL = fmt.Sprintf("https://127.0.0.1:%d", port)
		_ = os.RemoveAll(s.StepPath)
		if out, err := s.step(context.Background(), "ca", "init",
			"--name=meshca-test-stepca",
			"--dns=127.0.0.1", "--dns=localhost",
			"--address=127.0.0.1:"+itoa(port),
			"--provisioner="+s.Provisioner,
			"--password-file="+caPasswordFile,
			"--provisioner-password-file="+s.PasswordFile,
			"--deployment-type=standalone",
		); err != nil {
			t.Fatalf("testenv: step ca init: %v\n%s", err, out)
		}
		s.configure(t, templateFile, o.Bare)
		if o.BeforeStart != nil {
			o.BeforeStart(t, s)
		}
		s.proc = newProcess(t, fmt.Sprintf("step-ca-%d", attempt), caBin, []string{
			filepath.Join(s.StepPath, "config", "ca.json"),
			"--password-file=" + caPasswordFile,
		}, []string{"STEPPATH=" + s.StepPath, "HOME=" + dir}, dir)
		// step-ca's graceful shutdown waits up to 5 s for connections
		// accepted while it was paused; an outage test wants a quick stop.
		s.proc.stopGrace = time.Second
		if lastErr = s.startAndWait(); lastErr == nil {
			return s
		}
		s.proc.stop()
		if !s.proc.addrInUse() {
			break
		}
	}
	t.Fatalf("testenv: step-ca: %v", lastErr)
	return nil
}

// configure reads what step ca init wrote and, unless bare, installs the
// template and claims.
func (s *StepCA) configure(t testing.TB, templateFile string, bare bool) {
	t.Helper()
	cfgPath := filepath.Join(s.StepPath, "config", "ca.json")
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	authority, _ := cfg["authority"].(map[string]any)
	provs, _ := authority["provisioners"].([]any)
	var prov map[string]any
	for _, p := range provs {
		if m, ok := p.(map[string]any); ok && m["name"] == s.Provisioner && m["type"] == "JWK" {
			prov = m
		}
	}
	if prov == nil {
		t.Fatalf("testenv: step ca init wrote no JWK provisioner %q:\n%s", s.Provisioner, raw)
	}
	key, _ := prov["key"].(map[string]any)
	s.ProvisionerKID, _ = key["kid"].(string)
	s.ProvisionerEncryptedKey, _ = prov["encryptedKey"].(string)
	if !bare {
		prov["options"] = map[string]any{"x509": map[string]any{"templateFile": templateFile}}
		prov["claims"] = map[string]any{
			"minTLSCertDuration":     "30s",
			"maxTLSCertDuration":     "2160h",
			"defaultTLSCertDuration": "24h",
		}
		out, _ := json.MarshalIndent(cfg, "", "\t")
		if err := os.WriteFile(cfgPath, out, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s.ProvisionerKeyFile = writeFile(t, filepath.Dir(s.PasswordFile), "provisioner-key.jwe", []byte(s.ProvisionerEncryptedKey))
	s.RootFile = filepath.Join(s.StepPath, "certs", "root_ca.crt")
	if s.RootPEM, err = os.ReadFile(s.RootFile); err != nil {
		t.Fatal(err)
	}
	if s.IntermediatePEM, err = os.ReadFile(filepath.Join(s.StepPath, "certs", "intermediate_ca.crt")); err != nil {
		t.Fatal(err)
	}
	dec := exec.Command(s.stepBin, "crypto", "jwe", "decrypt", "--password-file="+s.PasswordFile)
	dec.Env = append(os.Environ(), "STEPPATH="+s.StepPath)
	dec.Stdin = bytes.NewReader([]byte(s.ProvisionerEncryptedKey))
	var stderr bytes.Buffer
	dec.Stderr = &stderr
	if s.ProvisionerKeyJSON, err = dec.Output(); err != nil {
		t.Fatalf("testenv: decrypt provisioner key: %v: %s", err, stderr.String())
	}
}

func (s *StepCA) step(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, s.stepBin, args...)
	cmd.Env = append(os.Environ(), s.Env()...)
	return cmd.CombinedOutput()
}

// Step runs the step CLI with this CA's STEPPATH and returns its combined output.
func (s *StepCA) Step(ctx context.Context, args ...string) ([]byte, error) {
	return s.step(ctx, args...)
}

// Env is the environment the step CLI runs with for this CA: STEPPATH,
// and HOME in the test's directory. Append it to os.Environ() to run
// commands (such as a page's `step ca provisioner add`) against this CA.
func (s *StepCA) Env() []string {
	return []string{"STEPPATH=" + s.StepPath, "HOME=" + filepath.Dir(s.StepPath)}
}

func (s *StepCA) startAndWait() error {
	if err := s.proc.start(); err != nil {
		return err
	}
	return s.proc.waitReady(30*time.Second, s.health)
}

// HTTPClient returns a client trusting the CA's root.
func (s *StepCA) HTTPClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.RootPEM)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

func (s *StepCA) health(ctx context.Context) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/health", nil)
	resp, err := s.HTTPClient().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("step-ca health: %d", resp.StatusCode)
	}
	return nil
}

// Token mints a one-time JWK token with the step CLI for subject and SANs
// (SANs default to the subject; they must equal the CSR's SANs).
func (s *StepCA) Token(t testing.TB, subject string, sans ...string) string {
	t.Helper()
	args := []string{"ca", "token", subject, "--ca-url=" + s.URL, "--root=" + s.RootFile,
		"--provisioner=" + s.Provisioner, "--password-file=" + s.PasswordFile}
	for _, san := range sans {
		args = append(args, "--san="+san)
	}
	ctx, cancel := ctxT()
	defer cancel()
	out, err := s.step(ctx, args...)
	if err != nil {
		t.Fatalf("testenv: step ca token: %v\n%s", err, out)
	}
	return string(bytes.TrimSpace(lastLine(out)))
}

func lastLine(b []byte) []byte {
	b = bytes.TrimSpace(b)
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		return b[i+1:]
	}
	return b
}

// Stop stops step-ca (also done automatically at the end of the test).
func (s *StepCA) Stop() { s.proc.stop() }

// Start starts a stopped step-ca again (same address, same state).
func (s *StepCA) Start(t testing.TB) {
	t.Helper()
	if err := s.startAndWait(); err != nil {
		t.Fatalf("testenv: step-ca restart: %v", err)
	}
}

// Restart is Stop then Start; state (DB, keys) is kept.
func (s *StepCA) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.Start(t)
}

// Pause freezes step-ca (SIGSTOP): requests hang until Resume.
func (s *StepCA) Pause(t testing.TB) {
	t.Helper()
	if err := s.proc.pause(); err != nil {
		t.Fatalf("testenv: step-ca pause: %v", err)
	}
}

// Resume continues a paused step-ca (SIGCONT).
func (s *StepCA) Resume(t testing.TB) {
	t.Helper()
	if err := s.proc.resume(); err != nil {
		t.Fatalf("testenv: step-ca resume: %v", err)
	}
}

// Log returns step-ca's output so far.
func (s *StepCA) Log() string { return s.proc.log() }
