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
