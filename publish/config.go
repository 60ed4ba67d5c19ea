package publish

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/meshca/broker/cluster"
	"github.com/meshca/broker/trust"
)

const (
	// ConfigMapName is the ConfigMap the Istio agent mounts in every
	// namespace.
	ConfigMapName = "istio-ca-root-cert"
	// DataKey is the ConfigMap key holding the bundle.
	DataKey = "root-cert.pem"
	// DefaultFieldManager names the publisher's writes in managedFields.
	DefaultFieldManager = "meshca-broker"
)

// Clusters is the set of clusters to publish to: *cluster.Registry.
type Clusters interface {
	// All returns every serving cluster, local first.
	All() []*cluster.Cluster
	// OnChange registers f to run after the set of clusters changed.
	OnChange(f func())
}

// Bundle is the trust bundle to publish: *trust.Bundle.
type Bundle interface {
	// Current is the current snapshot (nil before the first load).
	Current() *trust.Snapshot
	// Subscribe returns a channel that receives a value after each change.
	Subscribe() <-chan struct{}
}

// Config configures a Publisher.
type Config struct {
	// Clusters are the clusters to publish to, local and remote (required;
	// the broker's *cluster.Registry). Clusters added later are published
	// to as they appear; a removed or replaced cluster's work stops.
	Clusters Clusters

	// Bundle is what is published (required; the broker's *trust.Bundle):
	// its Current().PEM, the whole bundle, is root-cert.pem.
	Bundle Bundle

	// NamespaceSelector limits publishing to namespaces whose labels match
	// this label selector, in kubectl's -l syntax (for example
	// "istio-injection=enabled" or "mesh in (a,b)"). Default "": every
	// namespace. Namespaces can be left out by name with their automatic
	// label, as istiod leaves out some system namespaces:
	// "kubernetes.io/metadata.name notin (kube-public,kube-node-lease)". The selector is applied by the API server (only matching
	// namespaces are watched); the ConfigMap of a namespace that stops
	// matching is left as it is, not deleted.
	NamespaceSelector string

	// ClusterTrustBundleName, when not empty, also keeps a
	// ClusterTrustBundle (certificates.k8s.io, v1beta1 or else v1alpha1)
	// of that name holding the bundle, in every cluster that serves the
	// API; clusters that do not are skipped with one info log. Default "":
	// off. With ClusterTrustBundleSigner set, the API server requires the
	// name to start with the signer name with "/" replaced by ":" and a
	// final ":" (for signer "example.com/mesh": "example.com:mesh:<any>");
	// without a signer the name must not contain ":".
	ClusterTrustBundleName string

	// ClusterTrustBundleSigner is the ClusterTrustBundle's
	// spec.signerName (a "<domain>/<path>" name). Default "": no signer.
	// It is immutable in the API: an existing bundle with another signer
	// is left alone and reported as an error.
	ClusterTrustBundleSigner string

	// FieldManager names the publisher's writes (managedFields). Default
	// "meshca-broker".
	FieldManager string

	// Workers is how many objects of one cluster are written concurrently.
	// Default 4.
	Workers int

	// BackoffBase and BackoffMax bound the pause before rewriting an object
	// that a competing writer keeps changing: the first foreign change of
	// what the publisher wrote is repaired at once, each further one
	// within ConflictWindow doubles the pause from BackoffBase up to
	// BackoffMax. Defaults 1s and 5m.
	BackoffBase, BackoffMax time.Duration

	// ConflictWindow: another writer changing or deleting what the
	// publisher wrote within this long of the publisher's write counts as a
	// competing writer (a later change is an isolated edit and is repaired
	// at once). Default 10m.
	ConflictWindow time.Duration

	// Resync is how often every cached object is checked again against
	// the bundle. It reads only the local caches (no API requests, no
	// writes when in sync). Default 10m.
	Resync time.Duration

	// Registerer receives the publisher's metrics (nil: not registered).
	Registerer prometheus.Registerer

	// Log receives the publisher's logs (default slog.Default()).
	Log *slog.Logger
}

func (c *Config) defaults() {
	if c.FieldManager == "" {
		c.FieldManager = DefaultFieldManager
	}
	if c.Workers <= 0 {
		c.Workers = 4
	}
	if c.BackoffBase <= 0 {
		c.BackoffBase = time.Second
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = 5 * time.Minute
	}
	if c.BackoffMax < c.BackoffBase {
		c.BackoffMax = c.BackoffBase
	}
	if c.ConflictWindow <= 0 {
		c.ConflictWindow = 10 * time.Minute
	}
	if c.Resync <= 0 {
		c.Resync = 10 * time.Minute
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
}

// validate checks the configuration and parses the selector.
func (c *Config) validate() (labels.Selector, error) {
	if c.Clusters == nil {
		return nil, errors.New("publish: Clusters is required")
	}
	if c.Bundle == nil {
		return nil, errors.New("publish: Bundle is required")
	}
	var sel labels.Selector
	if c.NamespaceSelector != "" {
		s, err := labels.Parse(c.NamespaceSelector)
		if err != nil {
			return nil, fmt.Errorf("publish: namespace selector %q: %w", c.NamespaceSelector, err)
		}
		sel = s
	}
	if err := validateCTB(c.ClusterTrustBundleName, c.ClusterTrustBundleSigner); err != nil {
		return nil, fmt.Errorf("publish: %w", err)
	}
	return sel, nil
}

// validateCTB applies the API server's naming rules for ClusterTrustBundles
// so a bad name fails at start rather than on every write.
func validateCTB(name, signer string) error {
	if name == "" {
		if signer != "" {
			return errors.New("a ClusterTrustBundle signer name is set but no ClusterTrustBundle name")
		}
		return nil
	}
	rest := name
	if signer != "" {
		if err := validateSignerName(signer); err != nil {
			return err
		}
		prefix := strings.ReplaceAll(signer, "/", ":") + ":"
		if !strings.HasPrefix(name, prefix) {
			return fmt.Errorf("ClusterTrustBundle %q: with signer %q its name must start with %q", name, signer, prefix)
		}
		rest = strings.TrimPrefix(name, prefix)
	} else if strings.Contains(name, ":") {
		return fmt.Errorf("ClusterTrustBundle %q: without a signer name the name must not contain \":\"", name)
	}
	if errs := validation.IsDNS1123Subdomain(rest); len(errs) > 0 {
		return fmt.Errorf("ClusterTrustBundle name %q: %s", name, strings.Join(errs, "; "))
	}
	return nil
}

// validateSignerName mirrors the API server's rule: exactly one "/", a
// domain of at least two DNS labels before it, DNS subdomains after it.
func validateSignerName(signer string) error {
	bad := fmt.Errorf("ClusterTrustBundle signer name %q: want <domain>/<path>, for example example.com/mesh-roots", signer)
	segs := strings.Split(signer, "/")
	if len(segs) != 2 || len(segs[0]) > validation.DNS1123SubdomainMaxLength {
		return bad
	}
	domain := strings.Split(segs[0], ".")
	if len(domain) < 2 {
		return bad
	}
	for _, l := range domain {
		if len(validation.IsDNS1123Label(l)) > 0 {
			return bad
		}
	}
	for _, l := range strings.Split(segs[1], ".") {
		if len(validation.IsDNS1123Subdomain(l)) > 0 {
			return bad
		}
	}
	return nil
}
