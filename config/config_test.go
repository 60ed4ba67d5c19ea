package config

import (
	"strings"
	"testing"
	"time"

	_ "github.com/meshca/broker/backends/all"
)

func TestFullExampleIsValid(t *testing.T) {
	cfg, err := Load("testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Backend.Type != "local" || !strings.Contains(string(cfg.Backend.Settings), "ECDSA-P256") {
		t.Errorf("backend = %q %s", cfg.Backend.Type, cfg.Backend.Settings)
	}
	if cfg.Policy.MaxTTL.Duration != 24*time.Hour || cfg.TLS.TTL.Duration != 24*time.Hour {
		t.Errorf("durations not read: %+v", cfg.Policy)
	}
}

func TestEmptyFileGetsDefaults(t *testing.T) {
	cfg, err := Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != ":15012" || cfg.TrustDomain != "cluster.local" || cfg.ClusterID != "Kubernetes" || cfg.Backend.Type != "local" {
		t.Errorf("defaults: %+v", cfg)
	}
	if got := cfg.Authn.Kubernetes.Audiences; len(got) != 1 || got[0] != "istio-ca" {
		t.Errorf("audiences = %v", got)
	}
}

// TestJWKSClusterIDs: a key set never claims a cluster authn.kubernetes
// serves, and names its own cluster explicitly.
func TestJWKSClusterIDs(t *testing.T) {
	const entry = "  jwks:\n    - issuer: https://vm-issuer.example\n      file: /x\n"
	kubeOff := "authn:\n  kubernetes:\n    enabled: false\n" + entry
	kubeOn := "authn:\n  kubernetes:\n    clusters:\n      aliases: {old-east: east}\n" + entry
	cases := []struct {
		name, yaml, mention string
	}{
		{"no clusterID, kubernetes off", kubeOff, "authn.jwks[0].clusterID: must be set"},
		{"no clusterID, kubernetes on", kubeOn, "authn.jwks[0].clusterID: must be set"},
		{"the local cluster", kubeOn + "      clusterID: Kubernetes", `authn.jwks[0].clusterID: "Kubernetes" is the broker's own cluster`},
		{"the local cluster, renamed", "clusterID: east\n" + kubeOn + "      clusterID: east", `authn.jwks[0].clusterID: "east" is the broker's own cluster`},
		{"an alias", kubeOn + "      clusterID: old-east", `authn.jwks[0].clusterID: "old-east" is an alias of cluster "east"`},
		{"an aliased cluster", kubeOn + "      clusterID: east", `authn.jwks[0].clusterID: "east" is a cluster with the alias "old-east"`},
		{"two key sets for one cluster", kubeOn + "      clusterID: vms\n    - issuer: https://ci.example\n      file: /y\n      clusterID: vms",
			`authn.jwks[1].clusterID: "vms" is also authn.jwks[0]'s`},
		{"key age too short", kubeOn + "      clusterID: vms\n      maxKeyAge: 30s", "authn.jwks[0].maxKeyAge: 30s is outside [1m, 24h]"},
		{"key age too long", kubeOn + "      clusterID: vms\n      maxKeyAge: 48h", "authn.jwks[0].maxKeyAge: 48h0m0s is outside [1m, 24h]"},
		{"off-cluster callers", kubeOn + "      clusterID: vms", ""},
		{"off-cluster callers with bound tokens allowed", kubeOn + "      clusterID: vms\n      allowKubernetesBoundTokens: true\n      maxKeyAge: 1h", ""},
		// Without authn.kubernetes no cluster is checked against live
		// objects, so the key set may take the broker's own cluster ID.
		{"the local cluster ID, kubernetes off", kubeOff + "      clusterID: Kubernetes", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			cfg.ApplyDefaults()
			err = cfg.Validate()
			if tc.mention == "" {
				if err != nil {
					t.Fatal(err)
				}
				if got := cfg.Authn.JWKS[0].MaxKeyAge.Duration; got <= 0 {
					t.Fatalf("maxKeyAge = %s", got)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("err = %v, want it to name %q", err, tc.mention)
			}
			t.Logf("refused: %v", err)
		})
	}
}

func TestErrorsNameTheKey(t *testing.T) {
	cases := []struct{ name, yaml, mention string }{
		{"unknown top-level key", "listn: :1", `unknown key "listn"`},
		{"unknown nested key", "policy:\n  maxLifetime: 1h", `unknown key "policy.maxLifetime"`},
		{"keys match exactly", "policy:\n  maxTTl: 1h", `unknown key "policy.maxTTl"`},
		{"a key given twice", "listen: :1\nlisten: :2", `line 2: key "listen" already set`},
		{"not YAML", "listen: [", "not valid YAML"},
		{"bad duration", "policy:\n  maxTTL: forever", `policy.maxTTL: duration "forever" (invalid duration "forever")`},
		{"bad duration unit", "policy:\n  maxTTL: 1x", `policy.maxTTL: duration "1x" (unknown unit "x" in duration "1x")`},
		{"duration as a number", "policy:\n  maxTTL: 3600", `policy.maxTTL: duration 3600 (a duration is a string such as "30s")`},
		{"bad duration in a list entry", "authn:\n  jwks:\n    - {issuer: x, file: /x, clusterID: vm, maxKeyAge: 5q}", `authn.jwks.maxKeyAge: duration "5q"`},
		{"a number where a string goes", "listen: 15012", "listen: number is not a valid string"},
		{"off unquoted", "metricsListen: off", "metricsListen: a boolean is not a valid string (YAML reads unquoted on, off, yes and no as booleans: quote the value)"},
		{"a list where a section goes", "policy: [1]", "policy: array is not a valid section"},
		{"backend duration checked at parse time", "backend:\n  type: vault\n  vault:\n    timeout: 1x", `backend.vault.timeout: duration "1x"`},
		{"backend key checked at parse time", "backend:\n  type: vault\n  vault:\n    adress: https://v", `unknown key "backend.vault.adress"`},
		{"backend key matches exactly", "backend:\n  type: local\n  local:\n    TTL: 1h", `unknown key "backend.local.TTL"`},
		{"backend section for another type", "backend:\n  type: local\n  vault: {}", "backend.vault"},
		{"unknown backend", "backend:\n  type: nosuch", "backend.type"},
		{"bad listen", "listen: nowhere", "listen"},
		{"bad trust domain", "trustDomain: Not_A_Domain!", "trustDomain"},
		{"bad alias", "trustDomainAliases: ['a b']", "trustDomainAliases[0]"},
		{"max below min", "policy:\n  minTTL: 2h\n  maxTTL: 1h\n  defaultTTL: 1h", "maxTTL"},
		{"bad mode", "policy:\n  ttlOutOfBounds: sometimes", "ttlOutOfBounds"},
		{"jwks without source", "authn:\n  jwks:\n    - issuer: x\n      clusterID: vms", "authn.jwks[0]"},
		{"jwks without issuer", "authn:\n  jwks:\n    - file: /x\n      clusterID: vms", "authn.jwks[0].issuer"},
		{"no token authenticator", "authn:\n  kubernetes:\n    enabled: false", "authn"},
		{"bad log level", "log:\n  level: loud", "log.level"},
		{"short tls ttl", "tls:\n  ttl: 1m", "tls.ttl"},
		{"tiny header list", "limits:\n  maxHeaderListBytes: 100", "limits.maxHeaderListBytes"},
		{"too few streams", "limits:\n  maxConcurrentStreams: 1", "limits.maxConcurrentStreams"},
		{"per-IP above total", "limits:\n  maxConnections: 10\n  maxConnectionsPerIP: 20", "limits.maxConnectionsPerIP"},
		{"negative connections", "limits:\n  maxConnections: -5", "limits.maxConnections"},
		{"stream age below sign timeout", "signTimeout: 30s\nlimits:\n  maxStreamAge: 10s", "limits.maxStreamAge"},
		{"no streams", "limits:\n  maxStreams: -1", "limits.maxStreams"},
		{"no burst", "limits:\n  issuance:\n    burst: -1", "limits.issuance.burst"},
		{"refill too slow", "limits:\n  issuance:\n    refill: 48h", "limits.issuance.refill"},
		{"alias of nothing", "authn:\n  kubernetes:\n    clusters:\n      aliases: {west: west}", "authn.kubernetes.clusters.aliases"},
		{"alias named like the local cluster", "clusterID: east\nauthn:\n  kubernetes:\n    clusters:\n      aliases: {east: west}", `alias "east" is the ID of a cluster the broker serves (clusterID)`},
		{"alias named like the default local cluster", "authn:\n  kubernetes:\n    clusters:\n      aliases: {Kubernetes: west}", `alias "Kubernetes" is the ID of a cluster the broker serves (clusterID)`},
		{"alias named like a key set's cluster", "authn:\n  kubernetes:\n    clusters:\n      aliases: {vm: west}\n  jwks:\n    - {issuer: x, file: /x, clusterID: vm}", `alias "vm" is the ID of a cluster the broker serves (authn.jwks[0].clusterID)`},
		{"weak rsa", "policy:\n  keys:\n    rsaMinBits: 1024\n    rsaMaxBits: 4096", "rsaMinBits"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tc.yaml))
			if err == nil {
				cfg.ApplyDefaults()
				err = cfg.Validate()
			}
			if err == nil || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("err = %v, want it to name %q", err, tc.mention)
			}
		})
	}
}
