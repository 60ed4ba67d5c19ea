package stepca

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

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

// dedupe keeps the first occurrence of every certificate, in order.
func dedupe(certs []*x509.Certificate) []*x509.Certificate {
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
