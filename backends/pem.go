package backends

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// ParseCertificates parses a PEM bundle of one or more certificates, as
// PKIs return chains and operators write trust-anchor files. Any other
// block type or trailing data is an error: a private key where a
// certificate belongs means something is badly wrong.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
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
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return out, nil
}

// ReadCertificates reads a PEM bundle from a file.
func ReadCertificates(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}

// Dedupe keeps the first occurrence of every certificate, in order. Some
// PKIs repeat certificates in their chains (Vault 1.11+ repeats the leaf
// in ca_chain).
func Dedupe(certs []*x509.Certificate) []*x509.Certificate {
	seen := make(map[[32]byte]bool, len(certs))
	out := certs[:0:0]
	for _, c := range certs {
		k := sha256.Sum256(c.Raw)
		if !seen[k] {
			seen[k] = true
			out = append(out, c)
		}
	}
	return out
}
