// Package config is the broker's configuration: one YAML file holding every
// setting, defaults for what is left out, and validation at start that
// names the offending key.
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"

	"github.com/meshca/broker/authn/mtls"
	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/policy"
)

// Duration reads "30s"-style strings.
type Duration = backends.Duration

// Config is the whole configuration file.
type Config struct {
	// Listen is the gRPC address (default ":15012", istiod's CA port).
	Listen string `json:"listen,omitempty"`
	// MetricsListen serves /metrics, /healthz and /readyz (default
	// ":15014"; "off" disables).
	MetricsListen string `json:"metricsListen,omitempty"`
	// DataDir keeps state such as a generated local root (default
	// /var/lib/meshca).
	DataDir string `json:"dataDir,omitempty"`
	// TrustDomain of issued SPIFFE IDs (default cluster.local).
	TrustDomain string `json:"trustDomain,omitempty"`
	// TrustDomainAliases are other trust domains a CSR may name for the
	// same workload; the certificate always carries TrustDomain.
	TrustDomainAliases []string `json:"trustDomainAliases,omitempty"`
	// ClusterID is this broker's own cluster as the Istio agent names it in
	// its clusterid header (default "Kubernetes", Istio's default).
	ClusterID string `json:"clusterID,omitempty"`
	// SignTimeout bounds one backend signing, retries included (default 10s).
	SignTimeout Duration `json:"signTimeout,omitempty"`
	// TrustAnchorsRefresh is how often the backend's trust anchors are
	// read again (default 5m).
	TrustAnchorsRefresh Duration `json:"trustAnchorsRefresh,omitempty"`
	// ExtraTrustedRoots is a PEM file of roots the mesh trusts besides the
	// backend's (a root coming or going in a rotation): they are in the
	// trust bundle every response and root-cert.pem carry. Re-read at
	// every refresh.
	ExtraTrustedRoots string `json:"extraTrustedRoots,omitempty"`

	TLS            TLS            `json:"tls,omitempty"`
	LeaderElection LeaderElection `json:"leaderElection,omitempty"`
	Publish        Publish        `json:"publish,omitempty"`
	Istiod         Istiod         `json:"istiod,omitempty"`
	Authn          Authn          `json:"authn,omitempty"`
	Policy         Policy         `json:"policy,omitempty"`
	Backend        Backend        `json:"backend,omitempty"`
	Log            Log            `json:"log,omitempty"`
	Limits         Limits         `json:"limits,omitempty"`
}

// Limits bound what one client, or all of them, can make the broker hold
// or spend.
type Limits struct {
	// MaxHeaderListBytes bounds a request's headers, as HTTP/2 counts
	// them (default 16 KiB: a service-account token is about 1 KiB).
	MaxHeaderListBytes int `json:"maxHeaderListBytes,omitempty"`
	// MaxConcurrentStreams per connection (default 256: ztunnel sends the
	// requests of every pod on its node over one connection).
	MaxConcurrentStreams int `json:"maxConcurrentStreams,omitempty"`
	// MaxConnections in all (default 8192) and per source IP (default
	// 512); -1 is no bound.
	MaxConnections      int `json:"maxConnections,omitempty"`
	MaxConnectionsPerIP int `json:"maxConnectionsPerIP,omitempty"`
	// MaxStreams bounds the requests open across all connections (default
	// 4096), each from its headers on; MaxStreamAge how long one may stay
	// open (default 2m, above signTimeout), so that streams whose body
	// never comes do not hold their slot.
	MaxStreams   int      `json:"maxStreams,omitempty"`
	MaxStreamAge Duration `json:"maxStreamAge,omitempty"`
	// Issuance bounds new PKI signings.
	Issuance IssuanceLimits `json:"issuance,omitempty"`
}

// IssuanceLimits: a token bucket per identity (cluster and SPIFFE ID) and
// a bound on signings in flight.
type IssuanceLimits struct {
	// Burst is how many new certificates one identity gets at once
	// (default 500: every replica of a Deployment shares its identity).
	Burst int `json:"burst,omitempty"`
	// Refill is the time one more certificate takes to come back (default 1s).
	Refill Duration `json:"refill,omitempty"`
	// MaxIdentities bounds the identities tracked (default 65536).
	MaxIdentities int `json:"maxIdentities,omitempty"`
	// MaxInFlight bounds the signings under way, also those whose caller
	// has left (default 512).
	MaxInFlight int `json:"maxInFlight,omitempty"`
	// BackendRate caps new signings per second at the backend (0, the
	// default: no cap), for a PKI with a quota of its own (Google CAS's
	// DevOps tier: 25 certificates/s per CA); BackendBurst is its bucket
	// (default: one second's worth). Beyond it: ResourceExhausted at once.
	BackendRate  float64 `json:"backendRate,omitempty"`
	BackendBurst int     `json:"backendBurst,omitempty"`
}

// TLS is the serving certificate.
type TLS struct {
	// DNSNames the broker's certificate carries. The defaults fit an
	// install in istio-system; istiod.istio-system.svc is also the name the
	// agent checks when its CA address says localhost.
	DNSNames []string `json:"dnsNames,omitempty"`
	// TTL of the serving certificate (default 24h); renewed at 2/3.
	TTL Duration `json:"ttl,omitempty"`
}

// LeaderElection picks the one replica that writes shared state (the
// published trust bundle, istiod's certificate), with a Lease in the local
// cluster. Every replica serves certificates.
type LeaderElection struct {
	// Enabled defaults to true when Kubernetes authentication is on; off,
	// this replica always leads.
	Enabled *bool `json:"enabled,omitempty"`
	// Namespace of the Lease (default: $POD_NAMESPACE, else istio-system).
	Namespace string `json:"namespace,omitempty"`
	// Name of the Lease, one per broker install (default meshca-broker).
	Name string `json:"name,omitempty"`
	// LeaseDuration: a new leader takes over within about this long after
	// the leader goes (default 15s).
	LeaseDuration Duration `json:"leaseDuration,omitempty"`
	// Identity of this replica in the Lease (default: $POD_NAME, else
	// hostname and process ID).
	Identity string `json:"identity,omitempty"`
}

// Publish writes the trust bundle into every namespace of every cluster
// (istio-ca-root-cert, key root-cert.pem), from the elected leader.
type Publish struct {
	// Enabled defaults to true when Kubernetes authentication is on.
	Enabled *bool `json:"enabled,omitempty"`
	// NamespaceSelector limits it to matching namespaces (kubectl -l
	// syntax; default every namespace).
	NamespaceSelector string `json:"namespaceSelector,omitempty"`
	// ClusterTrustBundle, when name is set, also keeps a
	// ClusterTrustBundle in clusters that serve that API.
	ClusterTrustBundle struct {
		Name   string `json:"name,omitempty"`
		Signer string `json:"signer,omitempty"`
	} `json:"clusterTrustBundle,omitempty"`
}

// Istiod is istiod's serving certificate, kept by the broker so istiod can
// run with its CA off.
type Istiod struct {
	// Enabled turns it on (default false).
	Enabled bool `json:"enabled,omitempty"`
	// Namespace of istiod and of the Secret (default istio-system).
	Namespace string `json:"namespace,omitempty"`
	// SecretName (default istiod-tls): tls.crt, tls.key, ca.crt.
	SecretName string `json:"secretName,omitempty"`
	// Revision adds istiod-<revision>.<namespace>.svc to the names.
	Revision string `json:"revision,omitempty"`
	// ExtraDNSNames are added to istiod.<namespace>.svc.
	ExtraDNSNames []string `json:"extraDNSNames,omitempty"`
	// TTL of the certificate (default 24h), renewed at two thirds.
	TTL Duration `json:"ttl,omitempty"`
}

// Authn selects the authenticators.
type Authn struct {
	// NodeAgents may ask for the certificates of the pods on their node
	// (ambient: ztunnel), as "namespace/serviceaccount" (default
	// [istio-system/ztunnel]; [] allows none). Needs kubernetes.
	NodeAgents []string   `json:"nodeAgents"`
	Kubernetes Kubernetes `json:"kubernetes,omitempty"`
	JWKS       []JWKS     `json:"jwks,omitempty"`
	// ClientCertificates: a request with no bearer token may renew with
	// the mesh certificate it presents, checked against the live cluster
	// view (default: on when kubernetes is; it cannot work without it).
	ClientCertificates *bool `json:"clientCertificates,omitempty"`
	// OffClusterWorkloads ("namespace/serviceaccount" or "namespace/*")
	// run outside every cluster (VMs): their certificates renew with a
	// fresh lifetime while their service account exists unchanged, where
	// every other workload only rotates its key within the lifetime of
	// the certificate it presents.
	OffClusterWorkloads []string `json:"offClusterWorkloads,omitempty"`
	// ClientCertificateIssuers is a PEM file of CAs whose certificates
	// may renew, besides the ones the broker has seen issue (its backend's
	// issuing CA, learned from every issuance).
	ClientCertificateIssuers string `json:"clientCertificateIssuers,omitempty"`
}

// Kubernetes is TokenReview against the local cluster's API server.
type Kubernetes struct {
	// Enabled defaults to true.
	Enabled *bool `json:"enabled,omitempty"`
	// Kubeconfig path; empty means in-cluster configuration.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// Audiences the token must be for (default [istio-ca]).
	Audiences []string `json:"audiences,omitempty"`
	// Timeout of one TokenReview (default 5s).
	Timeout Duration `json:"timeout,omitempty"`
	// Verification: local (default: signature against the cluster's
	// issuer keys, then live bound-object checks; TokenReview when that
	// cannot decide) or tokenreview (every token).
	Verification string `json:"verification,omitempty"`
	// QPS and Burst of each cluster's client (defaults 1000 / 2000).
	QPS   float32 `json:"qps,omitempty"`
	Burst int     `json:"burst,omitempty"`
	// MaxCachedObjects caps the pods plus service accounts cached per
	// cluster (default 250000); a cluster past it is verified by
	// TokenReview until it is replaced.
	MaxCachedObjects int `json:"maxCachedObjects,omitempty"`
	// Clusters beyond the local one.
	Clusters Clusters `json:"clusters,omitempty"`
}

// Clusters configures the remote clusters of a multi-cluster mesh.
type Clusters struct {
	// RemoteSecrets: watch Istio remote secrets (label
	// istio/multiCluster=true) in SecretNamespace (default true).
	RemoteSecrets *bool `json:"remoteSecrets,omitempty"`
	// SecretNamespace (default: $POD_NAMESPACE, else istio-system).
	SecretNamespace string `json:"secretNamespace,omitempty"`
	// KubeconfigDir: one kubeconfig per remote cluster, named by its ID.
	KubeconfigDir string `json:"kubeconfigDir,omitempty"`
	// Aliases: another name of a cluster -> its ID.
	Aliases map[string]string `json:"aliases,omitempty"`
	// What remote kubeconfigs may do (all false by default: they are
	// untrusted input, see cluster.KubeconfigPolicy).
	AllowExec         bool `json:"allowExec,omitempty"`
	AllowAuthProvider bool `json:"allowAuthProvider,omitempty"`
	AllowFiles        bool `json:"allowFiles,omitempty"`
	// AllowInsecureTLS: insecure-skip-tls-verify: true.
	AllowInsecureTLS bool `json:"allowInsecureTLS,omitempty"`
	// AllowPlaintext: an http:// server (the bearer token in clear).
	AllowPlaintext bool `json:"allowPlaintext,omitempty"`
	// AllowProxy: proxy-url.
	AllowProxy bool `json:"allowProxy,omitempty"`
	// AllowLoopback: a server on a loopback address or localhost.
	AllowLoopback bool `json:"allowLoopback,omitempty"`
	// AllowLinkLocal: a server on a link-local address (169.254.0.0/16,
	// fe80::/10, where cloud metadata endpoints are).
	AllowLinkLocal bool `json:"allowLinkLocal,omitempty"`
	// SyncTimeout: a cluster not synced by then is reported failed and
	// verified by TokenReview meanwhile (default 30s).
	SyncTimeout Duration `json:"syncTimeout,omitempty"`
}

// JWKS verifies tokens locally against a key set, for callers outside
// every cluster the broker checks against live objects (VMs, CI jobs with
// their own OIDC issuer). It sees only the token: a token bound to a
// deleted pod stays good here until it expires.
type JWKS struct {
	Issuer    string   `json:"issuer"`
	File      string   `json:"file,omitempty"`
	URL       string   `json:"url,omitempty"`
	CAFile    string   `json:"caFile,omitempty"`
	TokenFile string   `json:"tokenFile,omitempty"`
	Audiences []string `json:"audiences,omitempty"`
	// ClusterID is the cluster ID these callers' agents send. Required,
	// with no default: defaulting it to the broker's own cluster would
	// make this key set a second, laxer verifier of that cluster's tokens.
	// With authn.kubernetes on it must name no cluster the broker serves.
	ClusterID string `json:"clusterID,omitempty"`
	// MaxKeyAge: keys are used at most this long after their last
	// successful fetch (default 10m); past it, while fetches fail, tokens
	// are refused as Unavailable.
	MaxKeyAge Duration `json:"maxKeyAge,omitempty"`
	// AllowKubernetesBoundTokens accepts tokens bound to a pod, secret or
	// node (default false: such a token is a cluster's, and this key set
	// cannot see that its object was deleted).
	AllowKubernetesBoundTokens bool `json:"allowKubernetesBoundTokens,omitempty"`
}

// Bounds of authn.jwks[].maxKeyAge: below a minute a short outage of the
// issuer already refuses every token; above a day a withdrawn key would
// stay trusted too long.
const (
	MinJWKSKeyAge = time.Minute
	MaxJWKSKeyAge = 24 * time.Hour
)

// Policy bounds what is issued.
type Policy struct {
	DefaultTTL Duration `json:"defaultTTL,omitempty"`
	MinTTL     Duration `json:"minTTL,omitempty"`
	MaxTTL     Duration `json:"maxTTL,omitempty"`
	// TTLOutOfBounds: clamp (default) or refuse.
	TTLOutOfBounds   string       `json:"ttlOutOfBounds,omitempty"`
	Backdate         *Duration    `json:"backdate,omitempty"`
	Keys             *policy.Keys `json:"keys,omitempty"`
	MaxCSRBytes      int          `json:"maxCSRBytes,omitempty"`
	MaxMetadataBytes int          `json:"maxMetadataBytes,omitempty"`
}

// Log configures logging.
type Log struct {
	// Level: debug, info (default), warn, error.
	Level string `json:"level,omitempty"`
	// Format: json (default) or text.
	Format string `json:"format,omitempty"`
}

// Backend names the signer type; its settings live under a key named
// after the type (backend: {type: vault, vault: {...}}).
type Backend struct {
	Type     string
	Settings json.RawMessage
}

// UnmarshalJSON splits the type from its settings section and refuses
// sections for other types, so a misspelt type is not silently ignored.
func (b *Backend) UnmarshalJSON(data []byte) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return err
	}
	if raw, ok := m["type"]; ok {
		if err := json.Unmarshal(raw, &b.Type); err != nil {
			return fmt.Errorf("backend.type: %w", err)
		}
	}
	for k, v := range m {
		switch k {
		case "type":
		case b.Type:
			b.Settings = v
		default:
			return fmt.Errorf("backend.%s: unknown key (backend.type is %q, so its settings go under backend.%s)", k, b.Type, b.Type)
		}
	}
	return nil
}

// MarshalJSON is the inverse of UnmarshalJSON.
func (b Backend) MarshalJSON() ([]byte, error) {
	m := map[string]json.RawMessage{}
	t, _ := json.Marshal(b.Type)
	m["type"] = t
	if len(b.Settings) > 0 {
		m[b.Type] = b.Settings
	}
	return json.Marshal(m)
}

// DefaultDNSNames are the serving certificate names for an install as
// istiod's replacement in istio-system.
var DefaultDNSNames = []string{
	"istiod.istio-system.svc",
	"istiod.istio-system.svc.cluster.local",
	"istiod.istio-system",
	"istiod",
	"meshca-broker.istio-system.svc",
	"meshca-broker.istio-system.svc.cluster.local",
}

// Load reads and parses a YAML file strictly; the result still needs
// ApplyDefaults and Validate.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	return Parse(b)
}

// Parse parses YAML strictly: an unknown key is an error naming it.
func Parse(data []byte) (*Config, error) {
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("configuration is not valid YAML: %w", err)
	}
	cfg := &Config{}
	if err := backends.DecodeStrict(j, cfg); err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	if err := backends.CheckConfig(cfg.Backend.Type, cfg.Backend.Settings); err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	return cfg, nil
}

// ApplyDefaults fills in what was left out.
func (c *Config) ApplyDefaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	defD := func(d *Duration, v time.Duration) {
		if d.Duration == 0 {
			d.Duration = v
		}
	}
	def(&c.Listen, ":15012")
	def(&c.MetricsListen, ":15014")
	def(&c.DataDir, "/var/lib/meshca")
	def(&c.TrustDomain, "cluster.local")
	def(&c.ClusterID, "Kubernetes")
	defD(&c.SignTimeout, 10*time.Second)
	defI := func(i *int, v int) {
		if *i == 0 {
			*i = v
		}
	}
	defI(&c.Limits.MaxHeaderListBytes, 16<<10)
	defI(&c.Limits.MaxConcurrentStreams, 256)
	defI(&c.Limits.MaxConnections, 8192)
	defI(&c.Limits.MaxConnectionsPerIP, 512)
	defI(&c.Limits.MaxStreams, 4096)
	defD(&c.Limits.MaxStreamAge, 2*time.Minute)
	defI(&c.Limits.Issuance.Burst, 500)
	defD(&c.Limits.Issuance.Refill, time.Second)
	defI(&c.Limits.Issuance.MaxIdentities, 65536)
	defI(&c.Limits.Issuance.MaxInFlight, 512)
	if c.Limits.Issuance.BackendRate > 0 && c.Limits.Issuance.BackendBurst == 0 {
		c.Limits.Issuance.BackendBurst = max(1, int(c.Limits.Issuance.BackendRate))
	}
	defD(&c.TrustAnchorsRefresh, 5*time.Minute)
	if len(c.TLS.DNSNames) == 0 {
		c.TLS.DNSNames = append([]string(nil), DefaultDNSNames...)
	}
	defD(&c.TLS.TTL, 24*time.Hour)
	if c.Authn.Kubernetes.Enabled == nil {
		t := true
		c.Authn.Kubernetes.Enabled = &t
	}
	if len(c.Authn.Kubernetes.Audiences) == 0 {
		c.Authn.Kubernetes.Audiences = []string{"istio-ca"}
	}
	defD(&c.Authn.Kubernetes.Timeout, 5*time.Second)
	def(&c.Authn.Kubernetes.Verification, "local")
	if c.LeaderElection.Enabled == nil {
		on := c.Authn.Kubernetes.Enabled == nil || *c.Authn.Kubernetes.Enabled
		c.LeaderElection.Enabled = &on
	}
	def(&c.LeaderElection.Namespace, os.Getenv("POD_NAMESPACE"))
	def(&c.LeaderElection.Namespace, "istio-system")
	def(&c.LeaderElection.Name, "meshca-broker")
	def(&c.LeaderElection.Identity, os.Getenv("POD_NAME"))
	defD(&c.LeaderElection.LeaseDuration, 15*time.Second)
	if c.Publish.Enabled == nil {
		on := c.Authn.Kubernetes.Enabled == nil || *c.Authn.Kubernetes.Enabled
		c.Publish.Enabled = &on
	}
	def(&c.Istiod.Namespace, "istio-system")
	def(&c.Istiod.SecretName, "istiod-tls")
	defD(&c.Istiod.TTL, 24*time.Hour)
	if c.Authn.NodeAgents == nil {
		c.Authn.NodeAgents = []string{"istio-system/ztunnel"}
	}
	if c.Authn.Kubernetes.QPS == 0 {
		c.Authn.Kubernetes.QPS = 1000
	}
	if c.Authn.Kubernetes.Burst == 0 {
		c.Authn.Kubernetes.Burst = 2000
	}
	cl := &c.Authn.Kubernetes.Clusters
	if cl.RemoteSecrets == nil {
		t := true
		cl.RemoteSecrets = &t
	}
	def(&cl.SecretNamespace, os.Getenv("POD_NAMESPACE"))
	def(&cl.SecretNamespace, "istio-system")
	defD(&cl.SyncTimeout, 30*time.Second)
	for i := range c.Authn.JWKS {
		if len(c.Authn.JWKS[i].Audiences) == 0 {
			c.Authn.JWKS[i].Audiences = []string{"istio-ca"}
		}
		// No default clusterID: see JWKS.ClusterID.
		defD(&c.Authn.JWKS[i].MaxKeyAge, 10*time.Minute)
	}
	if c.Authn.ClientCertificates == nil {
		on := *c.Authn.Kubernetes.Enabled
		c.Authn.ClientCertificates = &on
	}
	pd := policy.Defaults()
	defD(&c.Policy.DefaultTTL, pd.DefaultTTL)
	defD(&c.Policy.MinTTL, pd.MinTTL)
	defD(&c.Policy.MaxTTL, pd.MaxTTL)
	def(&c.Policy.TTLOutOfBounds, string(pd.OutOfBounds))
	if c.Policy.Backdate == nil {
		c.Policy.Backdate = &Duration{Duration: pd.Backdate}
	}
	if c.Policy.Keys == nil {
		k := pd.Keys
		c.Policy.Keys = &k
	}
	if c.Policy.MaxCSRBytes == 0 {
		c.Policy.MaxCSRBytes = pd.MaxCSRBytes
	}
	if c.Policy.MaxMetadataBytes == 0 {
		c.Policy.MaxMetadataBytes = pd.MaxMetadataBytes
	}
	def(&c.Backend.Type, "local")
	def(&c.Log.Level, "info")
	def(&c.Log.Format, "json")
}

// PolicyConfig converts the policy section; call after Validate.
func (c *Config) PolicyConfig() policy.Config {
	pc := policy.Config{
		TrustDomain:      spiffeid.RequireTrustDomainFromString(c.TrustDomain),
		DefaultTTL:       c.Policy.DefaultTTL.Duration,
		MinTTL:           c.Policy.MinTTL.Duration,
		MaxTTL:           c.Policy.MaxTTL.Duration,
		OutOfBounds:      policy.OverMax(c.Policy.TTLOutOfBounds),
		Backdate:         c.Policy.Backdate.Duration,
		Keys:             *c.Policy.Keys,
		MaxCSRBytes:      c.Policy.MaxCSRBytes,
		MaxMetadataBytes: c.Policy.MaxMetadataBytes,
	}
	for _, a := range c.TrustDomainAliases {
		pc.TrustDomainAliases = append(pc.TrustDomainAliases, spiffeid.RequireTrustDomainFromString(a))
	}
	return pc
}

// Validate checks every setting and names the first bad key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	checkAddr := func(key, v string) {
		if _, _, err := net.SplitHostPort(v); err != nil {
			bad(key, "%q is not a host:port address: %v", v, err)
		}
	}
	checkAddr("listen", c.Listen)
	if c.MetricsListen != "off" {
		checkAddr("metricsListen", c.MetricsListen)
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		bad("trustDomain", "%q: %v", c.TrustDomain, err)
	}
	for i, a := range c.TrustDomainAliases {
		if _, err := spiffeid.TrustDomainFromString(a); err != nil {
			bad(fmt.Sprintf("trustDomainAliases[%d]", i), "%q: %v", a, err)
		}
	}
	if c.SignTimeout.Duration <= 0 || c.SignTimeout.Duration > 5*time.Minute {
		bad("signTimeout", "%s is outside (0, 5m]", c.SignTimeout)
	}
	c.Limits.validate(bad)
	if c.Limits.MaxStreamAge.Duration <= c.SignTimeout.Duration {
		bad("limits.maxStreamAge", "%s is not above signTimeout (%s)", c.Limits.MaxStreamAge, c.SignTimeout)
	}
	if c.TLS.TTL.Duration < 10*time.Minute {
		bad("tls.ttl", "%s is shorter than 10m", c.TLS.TTL)
	}
	if *c.LeaderElection.Enabled && !*c.Authn.Kubernetes.Enabled {
		bad("leaderElection.enabled", "needs authn.kubernetes (the Lease lives in the local cluster)")
	}
	if d := c.LeaderElection.LeaseDuration.Duration; d < 2*time.Second || d > 5*time.Minute {
		bad("leaderElection.leaseDuration", "%s is outside [2s, 5m]", d)
	}
	if *c.Publish.Enabled && !*c.Authn.Kubernetes.Enabled {
		bad("publish.enabled", "needs authn.kubernetes (the clusters come from there)")
	}
	if c.Istiod.Enabled && !*c.Authn.Kubernetes.Enabled {
		bad("istiod.enabled", "needs authn.kubernetes (the Secret lives in the local cluster)")
	}
	if c.Istiod.TTL.Duration < 10*time.Minute {
		bad("istiod.ttl", "%s is shorter than 10m", c.Istiod.TTL)
	}
	switch c.Authn.Kubernetes.Verification {
	case "local", "tokenreview":
	default:
		bad("authn.kubernetes.verification", "%q is neither local nor tokenreview", c.Authn.Kubernetes.Verification)
	}
	if c.Authn.Kubernetes.MaxCachedObjects < 0 {
		bad("authn.kubernetes.maxCachedObjects", "must not be negative")
	}
	if c.Authn.Kubernetes.QPS < 0 || c.Authn.Kubernetes.Burst < 0 {
		bad("authn.kubernetes.qps", "qps and burst must not be negative")
	}
	for i, a := range c.Authn.NodeAgents {
		if ns, sa, ok := strings.Cut(a, "/"); !ok || ns == "" || sa == "" || strings.Contains(sa, "/") {
			bad(fmt.Sprintf("authn.nodeAgents[%d]", i), "%q is not <namespace>/<service account>", a)
		}
	}
	// An alias is resolved before the cluster is looked up, so one named
	// like a cluster the broker serves would take that cluster's agents
	// elsewhere.
	declared := map[string]string{c.ClusterID: "clusterID"}
	for i, j := range c.Authn.JWKS {
		if _, ok := declared[j.ClusterID]; !ok {
			declared[j.ClusterID] = fmt.Sprintf("authn.jwks[%d].clusterID", i)
		}
	}
	for alias, id := range c.Authn.Kubernetes.Clusters.Aliases {
		switch {
		case alias == "" || id == "" || alias == id:
			bad("authn.kubernetes.clusters.aliases", "%q -> %q is not an alias", alias, id)
		case declared[alias] != "":
			bad("authn.kubernetes.clusters.aliases", "alias %q is the ID of a cluster the broker serves (%s); an alias must be another name", alias, declared[alias])
		}
	}
	if d := c.Authn.Kubernetes.Clusters.SyncTimeout.Duration; d <= 0 || d > 10*time.Minute {
		bad("authn.kubernetes.clusters.syncTimeout", "%s is outside (0, 10m]", d)
	}
	c.validateJWKS(bad)
	if *c.Authn.ClientCertificates && !*c.Authn.Kubernetes.Enabled {
		bad("authn.clientCertificates", "renewal by certificate is checked against the live cluster view, so it needs authn.kubernetes")
	}
	for i, w := range c.Authn.OffClusterWorkloads {
		if _, err := mtls.ParseWorkload(w); err != nil {
			bad(fmt.Sprintf("authn.offClusterWorkloads[%d]", i), "%v", err)
		}
	}
	if len(c.Authn.OffClusterWorkloads) > 0 && !*c.Authn.ClientCertificates {
		bad("authn.offClusterWorkloads", "off-cluster workloads renew by certificate, and authn.clientCertificates is off")
	}
	if !*c.Authn.Kubernetes.Enabled && len(c.Authn.JWKS) == 0 && !*c.Authn.ClientCertificates {
		bad("authn", "no authenticator is enabled; every request would be refused")
	}
	if !*c.Authn.Kubernetes.Enabled && len(c.Authn.JWKS) == 0 {
		bad("authn", "a token authenticator (kubernetes or jwks) is needed: client certificates only renew existing identities")
	}
	if c.Backend.Type == "" {
		bad("backend.type", "must be set (known: %v)", backends.Types())
	} else if !slices.Contains(backends.Types(), c.Backend.Type) {
		bad("backend.type", "unknown type %q (known: %v)", c.Backend.Type, backends.Types())
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q is not debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "text":
	default:
		bad("log.format", "%q is not json or text", c.Log.Format)
	}
	if len(errs) == 0 {
		if err := c.PolicyConfig().Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// validateJWKS checks the key sets. Each bearer token has exactly one
// verifier: a key set must not claim a cluster the Kubernetes
// authenticator serves, where it would accept what the cluster check
// refuses (a deleted pod's token, a recreated service account's).
func (c *Config) validateJWKS(bad func(key, format string, args ...any)) {
	served := map[string]string{}
	if *c.Authn.Kubernetes.Enabled {
		served[c.ClusterID] = "the broker's own cluster (clusterID)"
		for alias, id := range c.Authn.Kubernetes.Clusters.Aliases {
			served[alias] = fmt.Sprintf("an alias of cluster %q (authn.kubernetes.clusters.aliases)", id)
			if _, ok := served[id]; !ok {
				served[id] = fmt.Sprintf("a cluster with the alias %q (authn.kubernetes.clusters.aliases)", alias)
			}
		}
	}
	seen := map[string]int{}
	for i, j := range c.Authn.JWKS {
		key := fmt.Sprintf("authn.jwks[%d]", i)
		if j.Issuer == "" {
			bad(key+".issuer", "must be set")
		}
		if (j.File == "") == (j.URL == "") {
			bad(key, "exactly one of file and url must be set")
		}
		switch what, isServed := served[j.ClusterID]; {
		case j.ClusterID == "":
			bad(key+".clusterID", "must be set: the cluster ID the agents of this key set's workloads send, not one the broker serves through authn.kubernetes")
		case isServed:
			bad(key+".clusterID", "%q is %s, whose tokens authn.kubernetes checks against live objects; a key set for it would accept tokens that check refuses. Use a cluster ID of its own for off-cluster callers", j.ClusterID, what)
		default:
			if prev, dup := seen[j.ClusterID]; dup {
				bad(key+".clusterID", "%q is also authn.jwks[%d]'s: one key set per cluster ID", j.ClusterID, prev)
			} else {
				seen[j.ClusterID] = i
			}
		}
		if d := j.MaxKeyAge.Duration; d < MinJWKSKeyAge || d > MaxJWKSKeyAge {
			bad(key+".maxKeyAge", "%s is outside [1m, 24h]", j.MaxKeyAge)
		}
	}
}

func (l *Limits) validate(bad func(key, format string, args ...any)) {
	// Below 4 KiB a real token with its headers would not fit; above 1 MiB
	// the bound no longer bounds memory (authn/kube refuses tokens over
	// 64 KiB anyway).
	if l.MaxHeaderListBytes < 4<<10 || l.MaxHeaderListBytes > 1<<20 {
		bad("limits.maxHeaderListBytes", "%d is outside [4096, 1048576]", l.MaxHeaderListBytes)
	}
	if l.MaxConcurrentStreams < 16 || l.MaxConcurrentStreams > 65536 {
		bad("limits.maxConcurrentStreams", "%d is outside [16, 65536] (ztunnel multiplexes its node's requests)", l.MaxConcurrentStreams)
	}
	if l.MaxConnections < -1 {
		bad("limits.maxConnections", "%d: want a positive bound, or -1 for none", l.MaxConnections)
	}
	if l.MaxConnectionsPerIP < -1 {
		bad("limits.maxConnectionsPerIP", "%d: want a positive bound, or -1 for none", l.MaxConnectionsPerIP)
	}
	if l.MaxConnections > 0 && l.MaxConnectionsPerIP > l.MaxConnections {
		bad("limits.maxConnectionsPerIP", "%d is above limits.maxConnections (%d)", l.MaxConnectionsPerIP, l.MaxConnections)
	}
	if l.MaxStreams < 1 {
		bad("limits.maxStreams", "%d: want at least 1", l.MaxStreams)
	}
	if l.Issuance.Burst < 1 {
		bad("limits.issuance.burst", "%d: want at least 1", l.Issuance.Burst)
	}
	if l.Issuance.Refill.Duration <= 0 || l.Issuance.Refill.Duration > 24*time.Hour {
		bad("limits.issuance.refill", "%s is outside (0, 24h]", l.Issuance.Refill)
	}
	if l.Issuance.MaxIdentities < 1 {
		bad("limits.issuance.maxIdentities", "%d: want at least 1", l.Issuance.MaxIdentities)
	}
	if l.Issuance.MaxInFlight < 1 {
		bad("limits.issuance.maxInFlight", "%d: want at least 1", l.Issuance.MaxInFlight)
	}
	if l.Issuance.BackendRate < 0 {
		bad("limits.issuance.backendRate", "%v: want 0 (no cap) or more", l.Issuance.BackendRate)
	}
	if l.Issuance.BackendBurst < 0 || (l.Issuance.BackendRate > 0 && l.Issuance.BackendBurst < 1) {
		bad("limits.issuance.backendBurst", "%d: want at least 1", l.Issuance.BackendBurst)
	}
}
