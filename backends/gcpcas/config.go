package gcpcas

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
	"time"

	"google.golang.org/api/option"

	"github.com/meshca/broker/backends"
)

// Config is the `backend.gcpcas` section of the broker's configuration.
type Config struct {
	// Project, Location and CaPool name the CA pool
	// projects/PROJECT/locations/LOCATION/caPools/CAPOOL. CaPool may
	// instead be that full name, and Project and Location left out.
	Project  string `json:"project,omitempty"`
	Location string `json:"location,omitempty"`
	CaPool   string `json:"caPool"`
	// CaID pins the issuing CA inside the pool (default: CA Service
	// picks one of the pool's enabled CAs).
	CaID string `json:"caId,omitempty"`
	// CertificateTemplate is a certificate template's ID (in the pool's
	// project and location) or full resource name, applied to every
	// request.
	CertificateTemplate string `json:"certificateTemplate,omitempty"`
	// CredentialsFile is a service account key or external account
	// (workload identity federation) JSON file. Default: Application
	// Default Credentials (GKE workload identity, metadata server,
	// GOOGLE_APPLICATION_CREDENTIALS).
	CredentialsFile string `json:"credentialsFile,omitempty"`
	// Endpoint overrides privateca.googleapis.com:443 (host:port), e.g. a
	// Private Service Connect endpoint, or a fake in tests.
	Endpoint string `json:"endpoint,omitempty"`
	// Insecure dials Endpoint in plaintext and without credentials. Tests
	// only: it is accepted for a loopback Endpoint alone.
	Insecure bool `json:"insecure,omitempty"`
	// TrustAnchorsFile is a PEM file with the roots issued chains must lead
	// to. When empty, the roots of the pool's CA chains (FetchCaCerts) are
	// used and the broker says so loudly.
	TrustAnchorsFile string `json:"trustAnchorsFile,omitempty"`
	// Timeout bounds one Sign when the caller's deadline is later or
	// absent (default 30s).
	Timeout backends.Duration `json:"timeout,omitempty"`
}

var (
	poolName   = regexp.MustCompile(`^projects/([^/]+)/locations/([^/]+)/caPools/([^/]+)$`)
	resourceID = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,63}$`)
)

// parent is the pool's resource name.
func (c *Config) parent() string {
	return fmt.Sprintf("projects/%s/locations/%s/caPools/%s", c.Project, c.Location, c.CaPool)
}

func (c *Config) validate() error {
	var errs []error
	if m := poolName.FindStringSubmatch(c.CaPool); m != nil {
		if (c.Project != "" && c.Project != m[1]) || (c.Location != "" && c.Location != m[2]) {
			errs = append(errs, fmt.Errorf("caPool %q contradicts project %q / location %q", c.CaPool, c.Project, c.Location))
		}
		c.Project, c.Location, c.CaPool = m[1], m[2], m[3]
	}
	for name, v := range map[string]string{"project": c.Project, "location": c.Location, "caPool": c.CaPool} {
		if v == "" {
			errs = append(errs, fmt.Errorf("%s is required", name))
		} else if strings.Contains(v, "/") {
			errs = append(errs, fmt.Errorf("%s %q must be an ID, not a path", name, v))
		}
	}
	if c.CaID != "" && !resourceID.MatchString(c.CaID) {
		errs = append(errs, fmt.Errorf("caId %q is not a CA ID", c.CaID))
	}
	if t := c.CertificateTemplate; t != "" && !strings.Contains(t, "/") {
		c.CertificateTemplate = fmt.Sprintf("projects/%s/locations/%s/certificateTemplates/%s", c.Project, c.Location, t)
	}
	if c.Insecure {
		host, _, err := net.SplitHostPort(c.Endpoint)
		ip := net.ParseIP(host)
		if err != nil || (host != "localhost" && (ip == nil || !ip.IsLoopback())) {
			errs = append(errs, fmt.Errorf("insecure is accepted only with a loopback endpoint (host:port), got %q", c.Endpoint))
		}
		if c.CredentialsFile != "" {
			errs = append(errs, errors.New("insecure sends no credentials: drop credentialsFile"))
		}
	}
	if c.Timeout.Duration < 0 {
		errs = append(errs, errors.New("timeout must not be negative"))
	}
	if c.Timeout.Duration == 0 {
		c.Timeout.Duration = 30 * time.Second
	}
	return errors.Join(errs...)
}

// credentialsOption reads the credentials file's type, which the Google
// auth library wants stated so that a file of an unexpected kind (one that
// would make the library fetch and run something) is refused.
func credentialsOption(path string) (option.ClientOption, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("gcpcas: reading credentialsFile: %w", err)
	}
	var f struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("gcpcas: credentialsFile %s is not JSON: %w", path, err)
	}
	types := map[string]option.CredentialsType{
		"service_account":              option.ServiceAccount,
		"authorized_user":              option.AuthorizedUser,
		"impersonated_service_account": option.ImpersonatedServiceAccount,
		"external_account":             option.ExternalAccount,
	}
	t, ok := types[f.Type]
	if !ok {
		return nil, fmt.Errorf("gcpcas: credentialsFile %s has type %q; want service_account, external_account, impersonated_service_account or authorized_user", path, f.Type)
	}
	return option.WithAuthCredentialsFile(t, path), nil
}
