package stepca

import (
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/meshca/broker/backends"
)

// Config is the `stepca` section of the broker's backend configuration.
type Config struct {
	// URL of the CA, https://host:port.
	URL string `json:"url"`
	// RootFile is a PEM file with the CA's root certificate(s): the trust
	// anchors of issued chains and the only roots trusted for TLS to the CA.
	RootFile string `json:"rootFile"`
	// Provisioner is the name of the JWK provisioner tokens are issued as.
	Provisioner string `json:"provisioner"`
	// KeyID is the provisioner key's kid. Required with KeyFile; with the
	// key fetched from the CA it selects among same-named provisioners.
	KeyID string `json:"keyId,omitempty"`
	// PasswordFile or PasswordEnv (the name of an environment variable)
	// holds the password that decrypts the provisioner key.
	PasswordFile string `json:"passwordFile,omitempty"`
	PasswordEnv  string `json:"passwordEnv,omitempty"`
	// KeyFile holds the provisioner's encrypted private JWK (JWE, as in
	// ca.json's encryptedKey or from `step crypto jwk create`). When empty
	// the encrypted key is fetched from the CA's /provisioners endpoint.
	KeyFile string `json:"keyFile,omitempty"`
	// Timeout bounds every call to the CA (default 10s), inside the
	// caller's own deadline.
	Timeout backends.Duration `json:"timeout,omitempty"`
	// TokenLifetime is the validity of each one-time token (default 1m):
	// it only has to outlive one sign call.
	TokenLifetime backends.Duration `json:"tokenLifetime,omitempty"`
}

const (
	defaultTimeout       = 10 * time.Second
	defaultTokenLifetime = time.Minute
)

func (c *Config) setDefaults() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.URL == "" {
		bad("url is required")
	} else if u, err := url.Parse(c.URL); err != nil {
		bad("url %q: %v", c.URL, err)
	} else if u.Scheme != "https" || u.Host == "" {
		bad("url %q must be https://host[:port]", c.URL)
	}
	if c.RootFile == "" {
		bad("rootFile is required: it is both the TLS trust for the CA and the trust anchor of issued chains")
	}
	if c.Provisioner == "" {
		bad("provisioner is required")
	}
	if nonEmpty(c.PasswordFile, c.PasswordEnv) != 1 {
		bad("set exactly one of passwordFile and passwordEnv")
	}
	if c.KeyFile != "" && c.KeyID == "" {
		bad("keyId is required with keyFile (step-ca finds the provisioner key by it)")
	}
	if c.Timeout.Duration < 0 {
		bad("timeout must be positive")
	} else if c.Timeout.Duration == 0 {
		c.Timeout.Duration = defaultTimeout
	}
	switch {
	case c.TokenLifetime.Duration < 0:
		bad("tokenLifetime must be positive")
	case c.TokenLifetime.Duration == 0:
		c.TokenLifetime.Duration = defaultTokenLifetime
	case c.TokenLifetime.Duration > 10*time.Minute:
		bad("tokenLifetime %v is longer than the 10m a one-time token should live", c.TokenLifetime.Duration)
	}
	return errors.Join(errs...)
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
