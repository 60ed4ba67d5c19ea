package vault

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
)

// parsePEMCerts parses every CERTIFICATE block in data. Other block types
// are an error: a private key in a certificate field means something is
// badly wrong and must not pass unnoticed.
func parsePEMCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, data = pem.Decode(data)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q", blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(bytes.TrimSpace(data)) != 0 {
		return nil, errors.New("trailing data after the last PEM certificate")
	}
	return out, nil
}

// dedupe keeps the first occurrence of every certificate, in order. Vault
// 1.11+ repeats the leaf inside ca_chain and multi-issuer mounts can list
// an intermediate twice.
func dedupe(certs []*x509.Certificate) []*x509.Certificate {
	seen := make(map[[32]byte]bool, len(certs))
	out := certs[:0:0]
	for _, c := range certs {
		k := sha256.Sum256(c.Raw)
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, c)
	}
	return out
}

// selfSigned reports whether c is a root: a CA certificate that names and
// verifies itself.
func selfSigned(c *x509.Certificate) bool {
	return c.IsCA && bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

// roots returns the self-signed certificates of a bundle.
func roots(certs []*x509.Certificate) []*x509.Certificate {
	var out []*x509.Certificate
	for _, c := range certs {
		if selfSigned(c) {
			out = append(out, c)
		}
	}
	return out
}

func fingerprints(certs []*x509.Certificate) []string {
	out := make([]string, len(certs))
	for i, c := range certs {
		sum := sha256.Sum256(c.Raw)
		out[i] = fmt.Sprintf("%s (sha256 %s)", c.Subject, hex.EncodeToString(sum[:]))
	}
	return out
}

func sameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}
