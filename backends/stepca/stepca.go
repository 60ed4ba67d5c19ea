// Package stepca is the broker's backend for smallstep step-ca: it signs
// the approved request through a JWK provisioner, minting for every request
// a one-time token that names exactly the approved identities and is bound
// to the request's CSR.
package stepca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/smallstep/certificates/api"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/ca"

	"github.com/meshca/broker/backends"
)

// Type is the backend's name in the configuration.
const Type = "stepca"

func init() {
	backends.RegisterConfig(Type, func(ctx context.Context, cfg Config, opts backends.Options) (backends.Signer, error) {
		return newSigner(ctx, cfg, opts.Logger)
	})
}

// Signer signs through a step-ca JWK provisioner. It is safe for
// concurrent use.
type Signer struct {
	cfg      Config
	client   *ca.Client
	anchors  []*x509.Certificate
	audience string
	password []byte
	log      *slog.Logger

	mu     sync.Mutex
	issuer *tokenIssuer // nil until the provisioner key is loaded
}

var _ backends.Signer = (*Signer)(nil)

func newSigner(ctx context.Context, cfg Config, log *slog.Logger) (*Signer, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, fmt.Errorf("stepca: invalid configuration: %w", err)
	}
	s := &Signer{cfg: cfg, log: log.With("backend", "stepca", "url", cfg.URL)}
	rootPEM, err := os.ReadFile(cfg.RootFile)
	if err != nil {
		return nil, fmt.Errorf("stepca: reading rootFile: %w", err)
	}
	if s.anchors, err = backends.ParseCertificates(rootPEM); err != nil || len(s.anchors) == 0 {
		return nil, fmt.Errorf("stepca: rootFile %s holds no usable certificates: %v", cfg.RootFile, err)
	}
	for _, c := range s.anchors {
		if !c.IsCA {
			return nil, fmt.Errorf("stepca: rootFile %s: %s is not a CA certificate", cfg.RootFile, c.Subject)
		}
	}
	if s.password, err = readPassword(cfg); err != nil {
		return nil, fmt.Errorf("stepca: %w", err)
	}
	pool := x509.NewCertPool()
	for _, c := range s.anchors {
		pool.AddCert(c)
	}
	s.client, err = ca.NewClient(cfg.URL,
		ca.WithTransport(newTransport(pool)),
		ca.WithTransportDecorator(func(rt http.RoundTripper) http.RoundTripper { return statusRecorder{rt} }),
		ca.WithTimeout(cfg.Timeout.Duration))
	if err != nil {
		return nil, fmt.Errorf("stepca: creating client: %w", err)
	}
	// The audience step-ca expects for /sign; the port is part of it.
	s.audience = strings.TrimRight(cfg.URL, "/") + "/1.0/sign"

	if _, err := s.tokenIssuer(ctx); err != nil {
		if !errors.Is(err, backends.ErrUnavailable) {
			return nil, err
		}
		s.log.Warn("stepca: CA unreachable at startup; will fetch the provisioner key on first use", "error", err)
	}
	return s, nil
}

func readPassword(cfg Config) ([]byte, error) {
	var pw string
	if cfg.PasswordFile != "" {
		b, err := os.ReadFile(cfg.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("reading passwordFile: %w", err)
		}
		pw = string(b)
	} else {
		pw = os.Getenv(cfg.PasswordEnv)
	}
	// Files written by editors and `echo` end in a newline that is not
	// part of the password (step does the same trimming).
	pw = strings.TrimRight(pw, "\r\n")
	if pw == "" {
		return nil, errors.New("the provisioner password is empty")
	}
	return []byte(pw), nil
}

func newTransport(pool *x509.CertPool) *http.Transport {
	return &http.Transport{
		Proxy:       http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig: &tls.Config{
			MinVersion: tls.VersionTLS12,
			RootCAs:    pool,
			// The broker authenticates with its one-time tokens. Without
			// this the ca package would present any step identity found
			// under $STEPPATH, which nobody configured.
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				return &tls.Certificate{}, nil
			},
		},
		TLSHandshakeTimeout: 5 * time.Second,
		ForceAttemptHTTP2:   true,
		MaxIdleConns:        32,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
	}
}

// tokenIssuer returns the issuer, loading the provisioner key first if needed.
func (s *Signer) tokenIssuer(ctx context.Context) (*tokenIssuer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.issuer != nil {
		return s.issuer, nil
	}
	kid, encrypted := s.cfg.KeyID, ""
	if s.cfg.KeyFile != "" {
		b, err := os.ReadFile(s.cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("stepca: reading keyFile: %w", err)
		}
		encrypted = string(b)
	} else {
		var err error
		if kid, encrypted, err = s.fetchEncryptedKey(ctx); err != nil {
			return nil, err
		}
	}
	iss, err := newTokenIssuer(s.cfg.Provisioner, kid, s.audience, encrypted, s.password, s.cfg.TokenLifetime.Duration)
	if err != nil {
		return nil, fmt.Errorf("stepca: provisioner %q key: %w", s.cfg.Provisioner, err)
	}
	s.issuer = iss
	s.log.Info("stepca: provisioner key loaded", "provisioner", s.cfg.Provisioner, "kid", iss.kid)
	return iss, nil
}

// fetchEncryptedKey finds the JWK provisioner on the CA, over TLS verified
// against rootFile.
func (s *Signer) fetchEncryptedKey(ctx context.Context) (kid, key string, err error) {
	cursor := ""
	for {
		var ps *api.ProvisionersResponse
		err := s.do(ctx, func(ctx context.Context) error {
			var err error
			ps, err = s.client.ProvisionersWithContext(ctx, ca.WithProvisionerCursor(cursor))
			return err
		})
		if err != nil {
			return "", "", fmt.Errorf("stepca: listing provisioners: %w", err)
		}
		for _, p := range ps.Provisioners {
			if p.GetType() != provisioner.TypeJWK || p.GetName() != s.cfg.Provisioner {
				continue
			}
			kid, key, ok := p.GetEncryptedKey()
			if s.cfg.KeyID != "" && kid != s.cfg.KeyID {
				continue
			}
			if !ok || key == "" {
				return "", "", fmt.Errorf("stepca: provisioner %q publishes no encrypted key; configure keyFile", s.cfg.Provisioner)
			}
			return kid, key, nil
		}
		if ps.NextCursor == "" || ps.NextCursor == cursor {
			return "", "", fmt.Errorf("stepca: the CA has no JWK provisioner named %q (keyId %q)", s.cfg.Provisioner, s.cfg.KeyID)
		}
		cursor = ps.NextCursor
	}
}

// Sign mints a one-time token for exactly the template's names, bound to
// the CSR, and has step-ca sign the CSR until the template's NotAfter.
func (s *Signer) Sign(ctx context.Context, req *backends.Request) ([]*x509.Certificate, error) {
	if req == nil || req.CSR == nil || req.Template == nil {
		return nil, errors.New("stepca: request without CSR or template")
	}
	iss, err := s.tokenIssuer(ctx)
	if err != nil {
		return nil, err
	}
	tok, err := iss.token(req.CSR, req.Template, time.Now())
	if err != nil {
		return nil, fmt.Errorf("stepca: minting the one-time token: %w", err)
	}
	sr := &api.SignRequest{
		CsrPEM:   api.CertificateRequest{CertificateRequest: req.CSR},
		OTT:      tok,
		NotAfter: api.NewTimeDuration(req.Template.NotAfter),
	}
	var resp *api.SignResponse
	if err := s.do(ctx, func(ctx context.Context) error {
		var err error
		resp, err = s.client.SignWithContext(ctx, sr)
		return err
	}); err != nil {
		s.forgetKeyIfRejected(iss, err)
		return nil, fmt.Errorf("stepca: signing at %s: %w", s.cfg.URL, err)
	}
	return chainFromResponse(resp)
}

// forgetKeyIfRejected drops a key fetched from the CA when the CA rejects
// its tokens (401), so that a provisioner key rotated on the CA is picked
// up by the next request instead of failing until a restart.
func (s *Signer) forgetKeyIfRejected(iss *tokenIssuer, err error) {
	var ce *caError
	if s.cfg.KeyFile != "" || !errors.As(err, &ce) || ce.status != http.StatusUnauthorized {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.issuer == iss {
		s.issuer = nil
		s.log.Warn("stepca: the CA rejected a token; the provisioner key will be fetched again", "error", err)
	}
}

func chainFromResponse(resp *api.SignResponse) ([]*x509.Certificate, error) {
	var chain []*x509.Certificate
	for _, c := range resp.CertChainPEM {
		if c.Certificate != nil {
			chain = append(chain, c.Certificate)
		}
	}
	if len(chain) == 0 {
		// CAs before certChain existed answer with crt and ca only.
		for _, c := range []api.Certificate{resp.ServerPEM, resp.CaPEM} {
			if c.Certificate != nil {
				chain = append(chain, c.Certificate)
			}
		}
	}
	if len(chain) == 0 {
		return nil, errors.New("stepca: the CA's answer holds no certificate")
	}
	return backends.Dedupe(chain), nil
}

// TrustAnchors returns the roots from rootFile.
func (s *Signer) TrustAnchors(context.Context) ([]*x509.Certificate, error) {
	return append([]*x509.Certificate(nil), s.anchors...), nil
}

// do runs one CA call bounded by ctx and the configured timeout and
// classifies its error.
func (s *Signer) do(ctx context.Context, fn func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout.Duration)
	defer cancel()
	status := new(int)
	err := fn(context.WithValue(ctx, statusKey{}, status))
	if err == nil {
		return nil
	}
	return classify(err, *status)
}
