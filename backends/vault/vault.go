// Package vault is the broker's backend for HashiCorp Vault's PKI secrets
// engine: it has a Vault role sign the approved request and keeps the
// broker's Vault login alive.
package vault

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/meshca/broker/backends"
)

// Type is the backend's name in the configuration.
const Type = "vault"

func init() {
	backends.RegisterConfig(Type, func(ctx context.Context, cfg Config, opts backends.Options) (backends.Signer, error) {
		return newSigner(ctx, cfg, opts.Logger)
	})
}

// anchorRefresh is how long trust anchors read from Vault are reused
// before asking again, so that a root rotation in Vault reaches the broker
// without a restart.
const anchorRefresh = time.Minute

// Signer signs through a Vault PKI role. It is safe for concurrent use;
// Close stops its token renewal.
type Signer struct {
	cfg    Config
	path   string
	client *vaultapi.Client
	auth   *authenticator
	log    *slog.Logger

	fileAnchors []*x509.Certificate // from trustAnchorsFile; fixed

	anchorsMu      sync.Mutex
	vaultAnchors   []*x509.Certificate
	vaultAnchorsAt time.Time
}

var _ backends.Signer = (*Signer)(nil)

func newSigner(ctx context.Context, cfg Config, log *slog.Logger) (*Signer, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, fmt.Errorf("vault: invalid configuration: %w", err)
	}
	s := &Signer{cfg: cfg, path: cfg.signPath(), log: log.With("backend", "vault", "address", cfg.Address)}
	if cfg.TrustAnchorsFile != "" {
		b, err := os.ReadFile(cfg.TrustAnchorsFile)
		if err != nil {
			return nil, fmt.Errorf("vault: reading trustAnchorsFile: %w", err)
		}
		certs, err := backends.ParseCertificates(b)
		if err != nil || len(certs) == 0 {
			return nil, fmt.Errorf("vault: trustAnchorsFile %s holds no usable certificates: %v", cfg.TrustAnchorsFile, err)
		}
		s.fileAnchors = certs
	}
	httpClient, err := newHTTPClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	client, err := newClient(cfg, httpClient)
	if err != nil {
		return nil, err
	}
	loginClient, err := newClient(cfg, httpClient)
	if err != nil {
		return nil, err
	}
	s.client = client
	s.auth = newAuthenticator(newLoginMethod(cfg.Auth), client, loginClient, cfg.Timeout.Duration, s.log)
	go s.auth.maintain()

	if err := s.auth.ensure(ctx); err != nil {
		if classify(err) != backends.ErrUnavailable {
			s.Close()
			return nil, wrap("starting", err)
		}
		s.log.Warn("vault: unreachable at startup; will log in on first use", "error", err)
	}
	if s.fileAnchors == nil {
		if _, err := s.TrustAnchors(ctx); err != nil {
			if !errors.Is(err, backends.ErrUnavailable) {
				s.Close()
				return nil, err
			}
			s.log.Warn("vault: could not read trust anchors at startup; will retry", "error", err)
		}
	}
	return s, nil
}

// newClient builds an API client that does exactly what the configuration
// says: no retries of its own (the broker's RetryPolicy owns retrying,
// within the caller's deadline) and no token or namespace picked up from
// VAULT_* variables.
func newClient(cfg Config, hc *http.Client) (*vaultapi.Client, error) {
	c, err := vaultapi.NewClient(&vaultapi.Config{
		Address:    cfg.Address,
		HttpClient: hc,
		Timeout:    cfg.Timeout.Duration,
		MaxRetries: 0,
	})
	if err != nil {
		return nil, fmt.Errorf("vault: creating client: %w", err)
	}
	c.ClearToken()
	c.ClearNamespace()
	if cfg.Namespace != "" {
		c.SetNamespace(cfg.Namespace)
	}
	return c, nil
}

func newHTTPClient(cfg Config) (*http.Client, error) {
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.TLSServerName}
	if cfg.CABundle != "" {
		b, err := os.ReadFile(cfg.CABundle)
		if err != nil {
			return nil, fmt.Errorf("reading caBundle: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("caBundle %s holds no PEM certificates", cfg.CABundle)
		}
		tlsCfg.RootCAs = pool
	}
	if cfg.ClientCert != "" {
		kp := &keyPair{certFile: cfg.ClientCert, keyFile: cfg.ClientKey}
		if _, err := kp.get(nil); err != nil {
			return nil, err
		}
		tlsCfg.GetClientCertificate = kp.get
	}
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tlsCfg,
		TLSHandshakeTimeout: 5 * time.Second,
		ForceAttemptHTTP2:   true,
		MaxIdleConns:        32,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
	}
	if strings.HasPrefix(cfg.Address, "unix://") {
		sock := strings.TrimPrefix(cfg.Address, "unix://")
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "unix", sock)
		}
	}
	return &http.Client{
		Transport: tr,
		// The API client follows Vault's redirects (standby -> active) itself.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, nil
}

// keyPair serves the mTLS client certificate, re-reading the files when
// they change so a rotated certificate is used without a restart.
type keyPair struct {
	certFile, keyFile string
	mu                sync.Mutex
	certMod, keyMod   time.Time
	cert              *tls.Certificate
}

func (k *keyPair) get(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	cs, err1 := os.Stat(k.certFile)
	ks, err2 := os.Stat(k.keyFile)
	if err := errors.Join(err1, err2); err != nil {
		if k.cert != nil {
			return k.cert, nil
		}
		return nil, fmt.Errorf("vault client certificate: %w", err)
	}
	if k.cert != nil && cs.ModTime().Equal(k.certMod) && ks.ModTime().Equal(k.keyMod) {
		return k.cert, nil
	}
	c, err := tls.LoadX509KeyPair(k.certFile, k.keyFile)
	if err != nil {
		if k.cert != nil {
			// Mid-rotation the two files may not match yet; keep the old pair.
			return k.cert, nil
		}
		return nil, fmt.Errorf("vault client certificate: %w", err)
	}
	k.cert, k.certMod, k.keyMod = &c, cs.ModTime(), ks.ModTime()
	return k.cert, nil
}

// Close stops the background token renewal.
func (s *Signer) Close() error {
	s.auth.close()
	return nil
}

// Sign has the Vault role sign req.CSR with the template's names and
// lifetime and returns Vault's chain, leaf first, without duplicates. In
// sign-verbatim mode a CSR that says anything the template does not
// (subject, names, usages, other extensions) is refused before Vault is
// asked; in both modes a leaf whose subject is not the approved one is
// refused, naming the role setting responsible.
func (s *Signer) Sign(ctx context.Context, req *backends.Request) ([]*x509.Certificate, error) {
	if req == nil || req.CSR == nil || req.Template == nil {
		return nil, errors.New("vault: request without CSR or template")
	}
	if s.cfg.Mode == modeSignVerbatim {
		// Vault would copy the CSR's subject and extensions: refuse
		// anything but the approved ones without asking it.
		if err := checkVerbatim(req); err != nil {
			return nil, fmt.Errorf("vault: signing at %s: %w", s.path, err)
		}
	}
	data, err := s.signData(req, time.Now())
	if err != nil {
		return nil, fmt.Errorf("vault: signing at %s: %w", s.path, err)
	}
	sec, err := s.call(ctx, "signing at "+s.path, func(ctx context.Context) (*vaultapi.Secret, error) {
		return s.client.Logical().WriteWithContext(ctx, s.path, data)
	})
	if err != nil {
		return nil, err
	}
	chain, err := chainFromSecret(sec)
	if err != nil {
		return nil, fmt.Errorf("vault: signing at %s: reading Vault's answer: %w", s.path, err)
	}
	if err := checkIssuedSubject(chain[0], req.Template, s.cfg.Mode); err != nil {
		return nil, fmt.Errorf("vault: signing at %s: %w", s.path, err)
	}
	return chain, nil
}

// signData is the request body for the sign endpoints.
func (s *Signer) signData(req *backends.Request, now time.Time) (map[string]any, error) {
	t := req.Template
	ttl := t.NotAfter.Sub(now).Truncate(time.Second)
	if ttl <= 0 {
		return nil, fmt.Errorf("template NotAfter %v is not in the future", t.NotAfter)
	}
	data := map[string]any{
		"csr":    string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: req.CSR.Raw})),
		"format": "pem",
		"ttl":    fmt.Sprintf("%ds", int64(ttl/time.Second)),
		// A SPIFFE certificate carries its identity in the URI SAN only.
		"exclude_cn_from_sans": true,
	}
	if cn := t.Subject.CommonName; cn != "" {
		data["common_name"] = cn
	}
	if s.cfg.Mode == modeSignVerbatim {
		// sign-verbatim copies names from the CSR and drops extended key
		// usages unless told which ones to set.
		if eku := extKeyUsageNames(t.ExtKeyUsage); len(eku) > 0 {
			data["ext_key_usage"] = eku
		}
		if ku := keyUsageNames(t.KeyUsage); len(ku) > 0 {
			data["key_usage"] = ku
		}
		return data, nil
	}
	if len(t.URIs) > 0 {
		uris := make([]string, len(t.URIs))
		for i, u := range t.URIs {
			uris[i] = u.String()
		}
		data["uri_sans"] = strings.Join(uris, ",")
	}
	if len(t.DNSNames) > 0 {
		data["alt_names"] = strings.Join(t.DNSNames, ",")
	}
	if len(t.IPAddresses) > 0 {
		ips := make([]string, len(t.IPAddresses))
		for i, ip := range t.IPAddresses {
			ips[i] = ip.String()
		}
		data["ip_sans"] = strings.Join(ips, ",")
	}
	return data, nil
}

// chainFromSecret assembles leaf + CA chain from a sign answer.
func chainFromSecret(sec *vaultapi.Secret) ([]*x509.Certificate, error) {
	if sec == nil || sec.Data == nil {
		return nil, errors.New("empty answer")
	}
	leafPEM, _ := sec.Data["certificate"].(string)
	chain, err := backends.ParseCertificates([]byte(leafPEM))
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	if len(chain) == 0 {
		return nil, errors.New("answer holds no certificate")
	}
	var caPEM []string
	if list, ok := sec.Data["ca_chain"].([]any); ok && len(list) > 0 {
		for _, v := range list {
			if p, ok := v.(string); ok {
				caPEM = append(caPEM, p)
			}
		}
	} else if p, ok := sec.Data["issuing_ca"].(string); ok {
		caPEM = []string{p}
	}
	for _, p := range caPEM {
		certs, err := backends.ParseCertificates([]byte(p))
		if err != nil {
			return nil, fmt.Errorf("ca_chain: %w", err)
		}
		chain = append(chain, certs...)
	}
	return backends.Dedupe(chain), nil
}

// call runs fn with the current token, bounded by ctx and the configured
// timeout. When Vault answers 403 it logs in again (once for a burst of
// failing calls) and retries fn once; a second 403 is a refusal.
func (s *Signer) call(ctx context.Context, what string, fn func(context.Context) (*vaultapi.Secret, error)) (*vaultapi.Secret, error) {
	if err := s.auth.ensure(ctx); err != nil {
		return nil, wrap(what, err)
	}
	gen := s.auth.current().gen
	sec, err := s.once(ctx, fn)
	if err == nil {
		return sec, nil
	}
	if classify(err) != errPermissionDenied {
		return nil, wrap(what, err)
	}
	s.log.Info("vault: permission denied; logging in again", "doing", what)
	if lerr := s.auth.relogin(ctx, gen); lerr != nil {
		return nil, wrap(what, lerr)
	}
	sec, err = s.once(ctx, fn)
	if err != nil {
		return nil, wrap(what, err)
	}
	return sec, nil
}

func (s *Signer) once(ctx context.Context, fn func(context.Context) (*vaultapi.Secret, error)) (*vaultapi.Secret, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout.Duration)
	defer cancel()
	sec, err := fn(ctx)
	if err == nil && sec == nil {
		// The API client turns a 404 without a body into (nil, nil).
		err = &vaultapi.ResponseError{StatusCode: http.StatusNotFound, Errors: []string{"no such path (is the mount or role name right?)"}}
	}
	return sec, err
}

// TrustAnchors returns the configured anchors, or else the self-signed
// certificates of the mount's CA chain as read from Vault.
func (s *Signer) TrustAnchors(ctx context.Context) ([]*x509.Certificate, error) {
	if s.fileAnchors != nil {
		return append([]*x509.Certificate(nil), s.fileAnchors...), nil
	}
	s.anchorsMu.Lock()
	defer s.anchorsMu.Unlock()
	if s.vaultAnchors != nil && time.Since(s.vaultAnchorsAt) < anchorRefresh {
		return append([]*x509.Certificate(nil), s.vaultAnchors...), nil
	}
	anchors, err := s.fetchAnchors(ctx)
	if err != nil {
		if s.vaultAnchors != nil {
			s.log.Warn("vault: could not refresh trust anchors from Vault; keeping the previous ones", "error", err)
			return append([]*x509.Certificate(nil), s.vaultAnchors...), nil
		}
		return nil, err
	}
	if !sameCerts(anchors, s.vaultAnchors) {
		s.log.Warn("vault: TRUST ANCHORS TAKEN FROM VAULT, not from configuration: set trustAnchorsFile to pin them",
			"mount", s.cfg.Mount, "anchors", fingerprints(anchors))
	}
	s.vaultAnchors, s.vaultAnchorsAt = anchors, time.Now()
	return append([]*x509.Certificate(nil), anchors...), nil
}

// fetchAnchors reads <mount>/cert/ca_chain (JSON, all issuers of the
// default chain) and falls back to the raw <mount>/ca_chain PEM.
func (s *Signer) fetchAnchors(ctx context.Context) ([]*x509.Certificate, error) {
	what := "reading trust anchors from " + s.cfg.Mount + "/cert/ca_chain"
	sec, err := s.call(ctx, what, func(ctx context.Context) (*vaultapi.Secret, error) {
		return s.client.Logical().ReadWithContext(ctx, s.cfg.Mount+"/cert/ca_chain")
	})
	var bundle []byte
	if err == nil {
		if p, ok := sec.Data["ca_chain"].(string); ok {
			bundle = []byte(p)
		} else if p, ok := sec.Data["certificate"].(string); ok {
			bundle = []byte(p)
		}
	}
	if len(bundle) == 0 {
		if err != nil && !errors.Is(err, backends.ErrRefused) {
			return nil, err
		}
		what = "reading trust anchors from " + s.cfg.Mount + "/ca_chain"
		if bundle, err = s.readRaw(ctx, what, s.cfg.Mount+"/ca_chain"); err != nil {
			return nil, err
		}
	}
	certs, err := backends.ParseCertificates(bundle)
	if err != nil {
		return nil, fmt.Errorf("vault: %s: %w", what, err)
	}
	r := roots(certs)
	if len(r) == 0 {
		return nil, fmt.Errorf("vault: %s: the chain (%d certificates) holds no self-signed root; set trustAnchorsFile", what, len(certs))
	}
	return r, nil
}

func (s *Signer) readRaw(ctx context.Context, what, path string) ([]byte, error) {
	var body []byte
	_, err := s.call(ctx, what, func(ctx context.Context) (*vaultapi.Secret, error) {
		resp, err := s.client.Logical().ReadRawWithContext(ctx, path)
		if resp != nil {
			defer resp.Body.Close()
		}
		if err != nil {
			return nil, err
		}
		if err := resp.Error(); err != nil {
			return nil, err
		}
		// A CA bundle is a few KiB; the cap keeps a confused endpoint
		// from filling memory.
		if body, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20)); err != nil {
			return nil, err
		}
		return &vaultapi.Secret{}, nil
	})
	return body, err
}
