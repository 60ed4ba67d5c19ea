package trust

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// Issuers is the set of CAs the broker has seen sign its certificates (the
// certificate directly above each leaf it verified: the local CA, the
// backend's issuing CA or intermediate), plus any configured ones. Renewal
// with a client certificate is allowed only through one of them, so that
// when the trust anchor is a corporate root that also signs other things,
// what those other CAs issued cannot renew. Every issuer seen is kept for
// until it expires, in a file when one is given (across restarts), so
// certificates from before a rotation still renew during its overlap.
type Issuers struct {
	mu    sync.RWMutex
	certs []*x509.Certificate
	file  string
}

// NewIssuers starts the set with configured issuers (may be none) and,
// when file is set, the unexpired issuers learned before and kept there.
func NewIssuers(configured []*x509.Certificate, file string) (*Issuers, error) {
	s := &Issuers{certs: slices.Clone(configured), file: file}
	if file == "" {
		return s, nil
	}
	raw, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("issuers learned before: %w", err)
	}
	for rest := raw; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("issuers learned before (%s): %w", file, err)
		}
		if time.Now().Before(c.NotAfter) && !slices.ContainsFunc(s.certs, c.Equal) {
			s.certs = append(s.certs, c)
		}
	}
	return s, nil
}

// Learn adds the issuer of a chain the broker verified.
func (s *Issuers) Learn(issuer *x509.Certificate) {
	if issuer == nil {
		return
	}
	s.mu.RLock()
	known := slices.ContainsFunc(s.certs, issuer.Equal)
	s.mu.RUnlock()
	if known {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if slices.ContainsFunc(s.certs, issuer.Equal) {
		return
	}
	s.certs = append(s.certs, issuer)
	if s.file != "" {
		// Rare (a new issuing CA) and small: written whole, atomically.
		var buf bytes.Buffer
		for _, c := range s.certs {
			if time.Now().Before(c.NotAfter) {
				_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
			}
		}
		tmp := s.file + ".tmp"
		if err := os.MkdirAll(filepath.Dir(s.file), 0o700); err == nil {
			if err := os.WriteFile(tmp, buf.Bytes(), 0o600); err == nil {
				_ = os.Rename(tmp, s.file)
			}
		}
	}
}

// Contains reports whether c is one of the issuers.
func (s *Issuers) Contains(c *x509.Certificate) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.ContainsFunc(s.certs, c.Equal)
}

// List returns the issuers.
func (s *Issuers) List() []*x509.Certificate {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Clone(s.certs)
}
