// Package docs holds the documentation; its test keeps the configuration
// examples in the pages in step with the code.
package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/backends/awspca"
	"github.com/meshca/broker/backends/gcpcas"
	_ "github.com/meshca/broker/backends/localca"
	"github.com/meshca/broker/backends/stepca"
	"github.com/meshca/broker/backends/vault"
	"github.com/meshca/broker/config"
)

var yamlBlock = regexp.MustCompile("(?s)```yaml\n(.*?)```")

// TestBackendExamplesAreValidConfiguration parses every full example in
// docs/backends (a block with a top-level backend: key) as the broker
// would: strictly, so a renamed or misspelt key in a page fails here.
func TestBackendExamplesAreValidConfiguration(t *testing.T) {
	settings := map[string]func() any{
		"vault":  func() any { return &vault.Config{} },
		"stepca": func() any { return &stepca.Config{} },
		"awspca": func() any { return &awspca.Config{} },
		"gcpcas": func() any { return &gcpcas.Config{} },
	}
	pages, _ := filepath.Glob("backends/*.md")
	seen := map[string]bool{}
	for _, page := range pages {
		b, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range yamlBlock.FindAllStringSubmatch(string(b), -1) {
			if !strings.HasPrefix(m[1], "backend:") && !strings.Contains(m[1], "\nbackend:") {
				continue
			}
			cfg, err := config.Parse([]byte(m[1]))
			if err != nil {
				t.Errorf("%s: %v", page, err)
				continue
			}
			cfg.ApplyDefaults()
			if err := cfg.Validate(); err != nil {
				t.Errorf("%s: %v", page, err)
			}
			newCfg, ok := settings[cfg.Backend.Type]
			if !ok {
				t.Errorf("%s: example for unknown backend %q", page, cfg.Backend.Type)
				continue
			}
			if err := backends.DecodeConfig(cfg.Backend.Settings, newCfg()); err != nil {
				t.Errorf("%s: backend.%s: %v", page, cfg.Backend.Type, err)
			}
			seen[cfg.Backend.Type] = true
		}
	}
	for typ := range settings {
		if !seen[typ] {
			t.Errorf("no full configuration example for %s in docs/backends", typ)
		}
	}
}

// TestREADMEJWKSExampleIsValid keeps the README's off-cluster example a
// configuration the broker starts with next to authn.kubernetes (its
// default), and off any cluster it serves.
func TestREADMEJWKSExampleIsValid(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, m := range yamlBlock.FindAllStringSubmatch(string(b), -1) {
		if !strings.Contains(m[1], "  jwks:") {
			continue
		}
		found++
		cfg, err := config.Parse([]byte(m[1]))
		if err != nil {
			t.Fatalf("README jwks example: %v", err)
		}
		cfg.ApplyDefaults()
		if err := cfg.Validate(); err != nil {
			t.Fatalf("README jwks example: %v", err)
		}
		for i, j := range cfg.Authn.JWKS {
			if strings.Contains(j.URL, "/openid/v1/jwks") || j.ClusterID == cfg.ClusterID {
				t.Errorf("README jwks example, entry %d: a served cluster's key set (%s, cluster %q)", i, j.URL, j.ClusterID)
			}
		}
	}
	if found == 0 {
		t.Fatal("no jwks example in README.md")
	}
}
