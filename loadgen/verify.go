package loadgen

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// ParseRoots reads the PEM certificates of a CA's root file.
func ParseRoots(pemBytes []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, pemBytes = pem.Decode(pemBytes)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate in the roots")
	}
	return out, nil
}

// VerifyChain checks a chain a CA returned for a workload as the agent
// and its peers rely on it: at least two entries, leaf first and root last
// (the agent takes the root from the last entry, so it must be one of
// roots); the leaf certifies key (the workload's public key), names exactly
// wantID and nothing else, is not a CA, and chains to roots at time now
// through the entries in between.
func VerifyChain(chain []*x509.Certificate, key crypto.PublicKey, wantID string, roots []*x509.Certificate, now time.Time) error {
	if len(chain) < 2 {
		return fmt.Errorf("chain has %d entries, want leaf ... root (at least 2)", len(chain))
	}
	leaf, last := chain[0], chain[len(chain)-1]
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if k, ok := key.(equaler); !ok || !k.Equal(leaf.PublicKey) {
		return errors.New("leaf does not certify the workload's key")
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != wantID {
		got := make([]string, len(leaf.URIs))
		for i, u := range leaf.URIs {
			got[i] = u.String()
		}
		return fmt.Errorf("leaf URIs %q, want exactly [%s]", got, wantID)
	}
	if len(leaf.DNSNames)+len(leaf.EmailAddresses)+len(leaf.IPAddresses) != 0 {
		return fmt.Errorf("leaf has names besides its SPIFFE ID (DNS %q, email %q, IP %v)", leaf.DNSNames, leaf.EmailAddresses, leaf.IPAddresses)
	}
	if leaf.IsCA {
		return errors.New("leaf is a CA")
	}
	rootPool := x509.NewCertPool()
	lastIsRoot := false
	for _, r := range roots {
		rootPool.AddCert(r)
		if bytes.Equal(r.Raw, last.Raw) {
			lastIsRoot = true
		}
	}
	if !lastIsRoot {
		return fmt.Errorf("last chain entry (%s) is not one of the CA's roots", last.Subject)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1 : len(chain)-1] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: rootPool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return fmt.Errorf("leaf does not chain to the roots: %w", err)
	}
	return nil
}
