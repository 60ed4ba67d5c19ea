package vault

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/meshca/broker/backends"
)

// Config is the `vault` section of the broker's backend configuration.
type Config struct {
	// Address of Vault, https://host:port. Plain http is accepted only for a
	// loopback address (a Vault Agent or proxy on the same pod), because the
	// Vault token and the issued certificates would otherwise cross the
	// network in clear. unix:///path is accepted as well.
	Address string `json:"address"`
	// Namespace is the Vault Enterprise namespace of the PKI mount and of
	// the auth method (empty: root namespace).
	Namespace string `json:"namespace,omitempty"`
	// CABundle is a PEM file with the CAs that sign Vault's serving
	// certificate (default: the system roots).
	CABundle string `json:"caBundle,omitempty"`
	// ClientCert and ClientKey are PEM files for mutual TLS to Vault. They
	// are re-read when they change on disk, so a rotating sidecar works.
	ClientCert string `json:"clientCert,omitempty"`
	ClientKey  string `json:"clientKey,omitempty"`
	// TLSServerName overrides the name checked in Vault's certificate.
	TLSServerName string `json:"tlsServerName,omitempty"`

	// Mount is the PKI secrets engine's path (default "pki").
	Mount string `json:"mount,omitempty"`
	// Role is the PKI role signing requests go through.
	Role string `json:"role"`
	// Mode is "sign" (default: <mount>/sign/<role>, the role decides the
	// certificate's contents) or "sign-verbatim" (<mount>/sign-verbatim/<role>:
	// Vault copies the CSR, the broker passes key and extended key usages).
	Mode string `json:"mode,omitempty"`
	// Timeout bounds every call to Vault (default 10s), inside the caller's
	// own deadline.
	Timeout backends.Duration `json:"timeout,omitempty"`
	// TrustAnchorsFile is a PEM file with the roots issued chains must lead
	// to. When empty they are read from Vault (<mount>/cert/ca_chain) over
	// the configured TLS channel, and the broker logs that it did so.
	TrustAnchorsFile string `json:"trustAnchorsFile,omitempty"`

	// Auth says how the broker authenticates to Vault.
	Auth AuthConfig `json:"auth"`
}

// AuthConfig selects one authentication method and holds its settings.
type AuthConfig struct {
	// Method is "token", "approle" or "kubernetes"; only its section may be set.
	Method     string          `json:"method"`
	Token      *TokenAuth      `json:"token,omitempty"`
	AppRole    *AppRoleAuth    `json:"appRole,omitempty"`
	Kubernetes *KubernetesAuth `json:"kubernetes,omitempty"`
}

// TokenAuth uses a Vault token given directly. Exactly one source is set.
// The file and the environment variable are read again when Vault refuses
// the token, so an external agent can rotate it.
type TokenAuth struct {
	Token     string `json:"token,omitempty"`
	TokenFile string `json:"tokenFile,omitempty"`
	TokenEnv  string `json:"tokenEnv,omitempty"`
}

// AppRoleAuth logs in with an AppRole role ID and secret ID.
type AppRoleAuth struct {
	// MountPath of the approle auth method (default "approle").
	MountPath string `json:"mountPath,omitempty"`
	RoleID    string `json:"roleId"`
	// Exactly one of SecretID, SecretIDFile (re-read at every login) and
	// SecretIDEnv.
	SecretID     string `json:"secretId,omitempty"`
	SecretIDFile string `json:"secretIdFile,omitempty"`
	SecretIDEnv  string `json:"secretIdEnv,omitempty"`
}

// KubernetesAuth logs in with the broker's own service-account token.
type KubernetesAuth struct {
	// MountPath of the kubernetes auth method (default "kubernetes").
	MountPath string `json:"mountPath,omitempty"`
	// Role is the Vault kubernetes auth role.
	Role string `json:"role"`
	// TokenFile is re-read at every login because projected tokens rotate
	// (default /var/run/secrets/kubernetes.io/serviceaccount/token).
	TokenFile string `json:"tokenFile,omitempty"`
}

const (
	modeSign         = "sign"
	modeSignVerbatim = "sign-verbatim"

	defaultMount      = "pki"
	defaultTimeout    = 10 * time.Second
	defaultK8sToken   = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	defaultK8sMount   = "kubernetes"
	defaultAppRoleMnt = "approle"
)

// setDefaults fills in defaults and checks the configuration, naming the
// offending key so that a mistake can be found from the error alone.
func (c *Config) setDefaults() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if c.Address == "" {
		bad("address is required")
	} else if u, err := url.Parse(c.Address); err != nil {
		bad("address %q: %v", c.Address, err)
	} else {
		switch u.Scheme {
		case "https":
			if u.Host == "" {
				bad("address %q has no host", c.Address)
			}
		case "http":
			if !isLoopback(u.Hostname()) {
				bad("address %q: plain http is only accepted to a loopback address (a local Vault Agent); use https", c.Address)
			}
			if c.CABundle != "" || c.ClientCert != "" || c.TLSServerName != "" {
				bad("caBundle, clientCert and tlsServerName need an https address")
			}
		case "unix":
		default:
			bad("address %q: scheme must be https (or http to loopback, or unix)", c.Address)
		}
	}
	if (c.ClientCert == "") != (c.ClientKey == "") {
		bad("clientCert and clientKey must be set together")
	}
	c.Mount = strings.Trim(c.Mount, "/")
	if c.Mount == "" {
		c.Mount = defaultMount
	}
	switch c.Mode {
	case "":
		c.Mode = modeSign
	case modeSign, modeSignVerbatim:
	default:
		bad("mode %q: must be %q or %q", c.Mode, modeSign, modeSignVerbatim)
	}
	if c.Role == "" {
		bad("role is required")
	} else if strings.Contains(c.Role, "/") {
		bad("role %q must not contain '/'", c.Role)
	}
	if c.Timeout.Duration < 0 {
		bad("timeout must be positive")
	} else if c.Timeout.Duration == 0 {
		c.Timeout.Duration = defaultTimeout
	}
	if err := c.Auth.setDefaults(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (a *AuthConfig) setDefaults() error {
	sections := map[string]bool{"token": a.Token != nil, "approle": a.AppRole != nil, "kubernetes": a.Kubernetes != nil}
	switch a.Method {
	case "token", "approle", "kubernetes":
	case "":
		return errors.New("auth.method is required (token, approle or kubernetes)")
	default:
		return fmt.Errorf("auth.method %q: must be token, approle or kubernetes", a.Method)
	}
	for name, set := range sections {
		if set && name != a.Method {
			return fmt.Errorf("auth.%s is set but auth.method is %q", sectionKey(name), a.Method)
		}
	}
	switch a.Method {
	case "token":
		t := a.Token
		if t == nil {
			return errors.New("auth.token is required for method token")
		}
		if n := nonEmpty(t.Token, t.TokenFile, t.TokenEnv); n != 1 {
			return errors.New("auth.token: set exactly one of token, tokenFile, tokenEnv")
		}
	case "approle":
		r := a.AppRole
		if r == nil {
			return errors.New("auth.appRole is required for method approle")
		}
		if r.RoleID == "" {
			return errors.New("auth.appRole.roleId is required")
		}
		if n := nonEmpty(r.SecretID, r.SecretIDFile, r.SecretIDEnv); n != 1 {
			return errors.New("auth.appRole: set exactly one of secretId, secretIdFile, secretIdEnv")
		}
		r.MountPath = strings.Trim(r.MountPath, "/")
		if r.MountPath == "" {
			r.MountPath = defaultAppRoleMnt
		}
	case "kubernetes":
		k := a.Kubernetes
		if k == nil {
			// Everything but the role has a default; still require the
			// section so the role is not silently empty.
			return errors.New("auth.kubernetes is required for method kubernetes")
		}
		if k.Role == "" {
			return errors.New("auth.kubernetes.role is required")
		}
		k.MountPath = strings.Trim(k.MountPath, "/")
		if k.MountPath == "" {
			k.MountPath = defaultK8sMount
		}
		if k.TokenFile == "" {
			k.TokenFile = defaultK8sToken
		}
	}
	return nil
}

func sectionKey(method string) string {
	if method == "approle" {
		return "appRole"
	}
	return method
}

func nonEmpty(vals ...string) int {
	n := 0
	for _, v := range vals {
		if v != "" {
			n++
		}
	}
	return n
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// signPath is where signing requests go for this configuration.
func (c *Config) signPath() string {
	return c.Mount + "/" + c.Mode + "/" + c.Role
}
