package integration

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshca/broker/backends/backendtest"
)

// TestBrokerCheckAgainstEachBackend runs the real `broker check` binary:
// one test issuance through each backend, verified.
func TestBrokerCheckAgainstEachBackend(t *testing.T) {
	testenvRequired(t)
	bin := filepath.Join(t.TempDir(), "broker")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/broker").CombinedOutput(); err != nil {
		t.Fatalf("building the broker: %v\n%s", err, out)
	}
	for _, bc := range backendCases() {
		t.Run(bc.name, func(t *testing.T) {
			backend := bc.setup(t)
			cfg, err := json.Marshal(map[string]any{
				"dataDir": t.TempDir(),
				"backend": backend,
			})
			if err != nil {
				t.Fatal(err)
			}
			path := backendtest.WriteFile(t, "config.yaml", cfg)
			out, err := exec.Command(bin, "check", "--config", path).CombinedOutput()
			if err != nil {
				t.Fatalf("broker check: %v\n%s", err, out)
			}
			for _, want := range []string{"configuration: valid (backend " + bc.name, "test issuance: ok", "verification: ok"} {
				if !strings.Contains(string(out), want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
		})
	}
}
