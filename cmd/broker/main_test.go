package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestDemoIssuesACertificateForTheServiceAccount(t *testing.T) {
	for _, args := range [][]string{{"demo"}, {"demo", "--rsa", "--namespace", "shop", "--service-account", "cart"}} {
		out, err := run(t, args...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		ns, sa := "default", "demo"
		if len(args) > 1 {
			ns, sa = "shop", "cart"
		}
		for _, want := range []string{
			"SPIFFE ID:  spiffe://cluster.local/ns/" + ns + "/sa/" + sa,
			"chain verifies to the broker's root: true",
			"leaf holds the workload's key:      true",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("%v: output lacks %q:\n%s", args, want, out)
			}
		}
	}
}

func TestCheckMakesATestIssuance(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfg, []byte("dataDir: "+dir+"\nauthn:\n  kubernetes:\n    kubeconfig: /nonexistent\nbackend:\n  type: local\n"), 0o600)
	out, err := run(t, "check", "--config", cfg)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"configuration: valid", "test issuance: ok", "verification: ok (spiffe://cluster.local/ns/meshca-check/sa/meshca-check"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestCheckDoesNotCallABadBackendSectionValid: an error only the backend
// can see (a missing required key, a bad value) fails check before it
// prints "configuration: valid".
func TestCheckDoesNotCallABadBackendSectionValid(t *testing.T) {
	dir := t.TempDir()
	cases := []struct{ name, backend, mention string }{
		{"vault without a role", "  type: vault\n  vault:\n    address: http://127.0.0.1:1\n    auth:\n      method: token\n      token: {token: x}\n", "role"},
		{"local CA with a half key pair", "  type: local\n  local:\n    caCertsDir: " + dir + "/nonexistent\n", "nonexistent"},
		{"awspca without a CA ARN", "  type: awspca\n  awspca:\n    region: us-east-1\n", "caArn"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := filepath.Join(dir, "c.yaml")
			os.WriteFile(cfg, []byte("dataDir: "+dir+"\nbackend:\n"+tc.backend), 0o600)
			out, err := run(t, "check", "--config", cfg)
			if err == nil || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("err = %v, want it to name %q", err, tc.mention)
			}
			if strings.Contains(out, "configuration: valid") {
				t.Fatalf("check called the configuration valid:\n%s", out)
			}
		})
	}
}

func TestBadConfigurationNamesTheKey(t *testing.T) {
	dir := t.TempDir()
	cases := []struct{ yaml, mention string }{
		{"listen: [", "not valid YAML"},
		{"backend:\n  type: vault\n  vaul: {}", "backend.vaul"},
		{"policy:\n  maxTTL: 1m", "policy.maxTTL"},
		{"trustDomain: 'bad domain'", "trustDomain"},
	}
	for i, tc := range cases {
		cfg := filepath.Join(dir, "c.yaml")
		os.WriteFile(cfg, []byte(tc.yaml), 0o600)
		for _, cmd := range []string{"serve", "check"} {
			_, err := run(t, cmd, "--config", cfg)
			if err == nil || !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("case %d, %s: err = %v, want it to name %q", i, cmd, err, tc.mention)
			}
		}
	}
}

func TestFlagsAndEnvironmentOverrideTheFile(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfgPath, []byte("trustDomain: file.example\nclusterID: from-file\nlisten: 127.0.0.1:1\n"), 0o600)
	t.Setenv("MESHCA_CLUSTER_ID", "from-env")
	t.Setenv("MESHCA_LISTEN", "127.0.0.1:2")
	o := &overrides{listen: "127.0.0.1:3"}
	cfg, err := loadConfig(cfgPath, o)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TrustDomain != "file.example" || cfg.ClusterID != "from-env" || cfg.Listen != "127.0.0.1:3" {
		t.Fatalf("got trustDomain=%s clusterID=%s listen=%s", cfg.TrustDomain, cfg.ClusterID, cfg.Listen)
	}
}

func TestVersion(t *testing.T) {
	out, err := run(t, "version")
	if err != nil || !strings.HasPrefix(out, "broker ") {
		t.Fatalf("%q %v", out, err)
	}
}

// TestServeThatCannotRunWritesNoState: `broker serve` with nothing
// configured outside a cluster fails on the missing kubeconfig, naming it,
// before the local CA writes a root into the data directory.
func TestServeThatCannotRunWritesNoState(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	dataDir := filepath.Join(t.TempDir(), "data")
	cases := []struct {
		name    string
		yaml    string
		mention string
	}{
		{"no kubeconfig outside a cluster", "", "kubeconfig"},
		{"a backend duration that is no duration", "backend:\n  type: vault\n  vault:\n    timeout: 1x", `backend.vault.timeout: duration "1x"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := filepath.Join(t.TempDir(), "c.yaml")
			if err := os.WriteFile(cfg, []byte(tc.yaml+"\nlisten: 127.0.0.1:0\nmetricsListen: \"off\"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := run(t, "serve", "--config", cfg, "--data-dir", dataDir)
			if err == nil || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("err = %v, want it to name %q", err, tc.mention)
			}
			var written []string
			filepath.WalkDir(dataDir, func(p string, d os.DirEntry, err error) error {
				if err == nil && !d.IsDir() {
					written = append(written, p)
				}
				return nil
			})
			if len(written) > 0 {
				t.Fatalf("a failed start left state behind: %v", written)
			}
		})
	}
}
