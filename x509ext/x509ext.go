// Package x509ext reads, compares and names the X.509 extensions the
// broker judges on either side of a PKI: the key usages a CSR asks for or
// a certificate carries, and the names of extensions in messages. Policy,
// the verification step and the backends that check what a PKI would copy
// share it, so they apply one rule.
package x509ext

import (
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
)

var (
	// ErrMalformed means an extension's value does not parse.
	ErrMalformed = errors.New("malformed extension")
	// ErrUndefined means a key usage bit RFC 5280 does not define.
	ErrUndefined = errors.New("undefined key usage")
)

// ParseKeyUsage reads a keyUsage extension's value (a BIT STRING).
func ParseKeyUsage(der []byte) (x509.KeyUsage, error) {
	var bits asn1.BitString
	if rest, err := asn1.Unmarshal(der, &bits); err != nil || len(rest) != 0 {
		return 0, fmt.Errorf("%w: key usage", ErrMalformed)
	}
	var ku x509.KeyUsage
	for i := 0; i < bits.BitLength; i++ {
		if bits.At(i) != 0 {
			if i >= len(keyUsageNames) {
				return 0, fmt.Errorf("%w: bit %d", ErrUndefined, i)
			}
			ku |= 1 << uint(i)
		}
	}
	return ku, nil
}

// SameKeyUsage is the broker's rule for issued key usages: exactly the
// approved ones, except that keyEncipherment may be missing for a key that
// cannot encipher (ECDSA, Ed25519), which some PKIs drop; missing it grants
// less, not more. No key usage at all is unrestricted, never the same.
func SameKeyUsage(got, want x509.KeyUsage, pub crypto.PublicKey) bool {
	if got == 0 && want != 0 {
		return false
	}
	if _, isRSA := pub.(*rsa.PublicKey); !isRSA {
		got, want = got&^x509.KeyUsageKeyEncipherment, want&^x509.KeyUsageKeyEncipherment
	}
	return got == want
}

// keyUsageNames are RFC 5280's names, by bit.
var keyUsageNames = []string{"digitalSignature", "contentCommitment", "keyEncipherment", "dataEncipherment",
	"keyAgreement", "keyCertSign", "cRLSign", "encipherOnly", "decipherOnly"}

// KeyUsageNames names the bits set in ku, in bit order.
func KeyUsageNames(ku x509.KeyUsage) []string {
	var out []string
	for i, n := range keyUsageNames {
		if ku&(1<<uint(i)) != 0 {
			out = append(out, n)
		}
	}
	return out
}

var extensionNames = map[string]string{
	"2.5.29.9":          "subjectDirectoryAttributes",
	"2.5.29.14":         "subjectKeyIdentifier",
	"2.5.29.15":         "keyUsage",
	"2.5.29.17":         "subjectAltName",
	"2.5.29.18":         "issuerAltName",
	"2.5.29.19":         "basicConstraints",
	"2.5.29.30":         "nameConstraints",
	"2.5.29.32":         "certificatePolicies",
	"2.5.29.35":         "authorityKeyIdentifier",
	"2.5.29.37":         "extKeyUsage",
	"1.3.6.1.5.5.7.1.1": "authorityInfoAccess",
	"1.3.6.1.5.5.7.1.3": "qcStatements",
}

// ExtensionName is "name (oid)" for a known extension, else the OID.
func ExtensionName(oid asn1.ObjectIdentifier) string {
	if n, ok := extensionNames[oid.String()]; ok {
		return n + " (" + oid.String() + ")"
	}
	return oid.String()
}
