package awspca

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws/arn"
	"github.com/aws/aws-sdk-go-v2/service/acmpca/types"

	"github.com/meshca/broker/backends"
)

// Config is the `backend.awspca` section of the broker's configuration.
type Config struct {
	// CAArn is the issuing certificate authority,
	// arn:aws:acm-pca:REGION:ACCOUNT:certificate-authority/ID.
	CAArn string `json:"caArn"`
	// Region of the CA (default: the region in CAArn).
	Region string `json:"region,omitempty"`
	// Endpoint overrides the service endpoint (a VPC endpoint, or a fake in
	// tests). Plain http is accepted only for a loopback address.
	Endpoint string `json:"endpoint,omitempty"`
	// RoleArn, when set, is assumed through STS with the default chain's
	// credentials (IRSA, instance profile, environment...) before calling
	// Private CA; typically for a CA in another account.
	RoleArn string `json:"roleArn,omitempty"`
	// RoleSessionName for the assumed role (default "meshca-broker").
	RoleSessionName string `json:"roleSessionName,omitempty"`
	// ExternalID for the assumed role, if its trust policy requires one.
	ExternalID string `json:"externalId,omitempty"`
	// SigningAlgorithm the CA signs with (SHA256WITHRSA, SHA256WITHECDSA...).
	// Default: derived from the CA's key algorithm, read once with
	// DescribeCertificateAuthority.
	SigningAlgorithm string `json:"signingAlgorithm,omitempty"`
	// TemplateArn is the certificate template (default
	// arn:aws:acm-pca:::template/EndEntityCertificate_APIPassthrough/V1).
	// It must be an APIPassthrough or APICSRPassthrough template, because
	// the certificate's names travel in ApiPassthrough.
	TemplateArn string `json:"templateArn,omitempty"`
	// TrustAnchorsFile is a PEM file with the roots issued chains must lead
	// to. When empty the root is read from the CA's own chain
	// (GetCertificateAuthorityCertificate) and the broker says so loudly.
	TrustAnchorsFile string `json:"trustAnchorsFile,omitempty"`
	// Timeout bounds one Sign (issue and poll) when the caller's deadline
	// is later or absent (default 30s).
	Timeout backends.Duration `json:"timeout,omitempty"`
	// PollInterval is the first wait between GetCertificate polls while
	// issuance is in progress (default 200ms); it grows to 4x.
	PollInterval backends.Duration `json:"pollInterval,omitempty"`
}

// DefaultTemplateArn is the template used when none is configured: the
// end-entity template (digital signature and key encipherment, TLS server
// and client authentication) whose subject and SANs come from the API.
const DefaultTemplateArn = "arn:aws:acm-pca:::template/EndEntityCertificate_APIPassthrough/V1"

func (c *Config) validate() error {
	var errs []error
	if c.CAArn == "" {
		errs = append(errs, errors.New("caArn is required"))
	} else if a, err := arn.Parse(c.CAArn); err != nil || a.Service != "acm-pca" || !strings.HasPrefix(a.Resource, "certificate-authority/") {
		errs = append(errs, fmt.Errorf("caArn %q is not a Private CA ARN (arn:aws:acm-pca:REGION:ACCOUNT:certificate-authority/ID)", c.CAArn))
	} else if c.Region == "" {
		c.Region = a.Region
	}
	if c.Region == "" && c.CAArn != "" {
		errs = append(errs, errors.New("region is required when caArn does not name one"))
	}
	if c.Endpoint != "" {
		if err := checkEndpoint(c.Endpoint); err != nil {
			errs = append(errs, err)
		}
	}
	if c.RoleArn != "" {
		if a, err := arn.Parse(c.RoleArn); err != nil || a.Service != "iam" {
			errs = append(errs, fmt.Errorf("roleArn %q is not an IAM role ARN", c.RoleArn))
		}
	}
	if c.RoleSessionName == "" {
		c.RoleSessionName = "meshca-broker"
	}
	if c.SigningAlgorithm != "" && !knownSigningAlgorithm(c.SigningAlgorithm) {
		errs = append(errs, fmt.Errorf("signingAlgorithm %q is not one of %v", c.SigningAlgorithm, types.SigningAlgorithm("").Values()))
	}
	if c.TemplateArn == "" {
		c.TemplateArn = DefaultTemplateArn
	} else if !strings.HasPrefix(c.TemplateArn, "arn:") || !strings.Contains(c.TemplateArn, ":template/") {
		errs = append(errs, fmt.Errorf("templateArn %q is not a template ARN (arn:aws:acm-pca:::template/NAME/V1)", c.TemplateArn))
	} else if !strings.Contains(c.TemplateArn, "APIPassthrough/") && !strings.Contains(c.TemplateArn, "APICSRPassthrough/") {
		errs = append(errs, fmt.Errorf("templateArn %q ignores ApiPassthrough, so the broker could not set the certificate's names: use an *_APIPassthrough or *_APICSRPassthrough template", c.TemplateArn))
	}
	if c.Timeout.Duration < 0 || c.PollInterval.Duration < 0 {
		errs = append(errs, errors.New("timeout and pollInterval must not be negative"))
	}
	if c.Timeout.Duration == 0 {
		c.Timeout.Duration = 30 * time.Second
	}
	if c.PollInterval.Duration == 0 {
		c.PollInterval.Duration = 200 * time.Millisecond
	}
	return errors.Join(errs...)
}

func checkEndpoint(e string) error {
	u, err := url.Parse(e)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return fmt.Errorf("endpoint %q must be an http(s)://host[:port] URL", e)
	}
	if u.Scheme == "http" {
		host := u.Hostname()
		ip := net.ParseIP(host)
		if host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return fmt.Errorf("endpoint %q: plain http is accepted only for a loopback address", e)
		}
	}
	return nil
}

func knownSigningAlgorithm(s string) bool {
	for _, v := range types.SigningAlgorithm("").Values() {
		if string(v) == s {
			return true
		}
	}
	return false
}

// signingAlgorithmFor picks the signature a CA with this key makes by
// default: SHA-256 for RSA and P-256, the hash matching larger curves.
func signingAlgorithmFor(k types.KeyAlgorithm) (types.SigningAlgorithm, error) {
	switch k {
	case types.KeyAlgorithmRsa2048, types.KeyAlgorithmRsa3072, types.KeyAlgorithmRsa4096:
		return types.SigningAlgorithmSha256withrsa, nil
	case types.KeyAlgorithmEcPrime256v1:
		return types.SigningAlgorithmSha256withecdsa, nil
	case types.KeyAlgorithmEcSecp384r1:
		return types.SigningAlgorithmSha384withecdsa, nil
	case types.KeyAlgorithmEcSecp521r1:
		return types.SigningAlgorithmSha512withecdsa, nil
	case types.KeyAlgorithmMlDsa44, types.KeyAlgorithmMlDsa65, types.KeyAlgorithmMlDsa87:
		return types.SigningAlgorithm(k), nil
	case types.KeyAlgorithmSm2:
		return types.SigningAlgorithmSm3withsm2, nil
	}
	return "", fmt.Errorf("no default signing algorithm for CA key algorithm %q: set signingAlgorithm", k)
}
