// Package csrgen builds the certificate requests the broker sends on its own
// behalf (its serving certificate, `broker check`, the demo's and tests'
// stand-in for the Istio agent): an empty subject, the names in a
// subjectAltName extension marked critical, as RFC 5280 requires when the
// subject is empty and as the Istio agent does. crypto/x509 leaves the SAN
// extension of a CSR non-critical, and a strict PKI (AWS Private CA) refuses
// such a CSR.
package csrgen

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
)

// GeneralName tags (RFC 5280 4.2.1.6).
const (
	tagDNS = 2
	tagURI = 6
)

var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// Names are what the request asks for.
type Names struct {
	URIs     []*url.URL
	DNSNames []string
}

// New returns a DER CSR for key with an empty subject and names in a
// critical subjectAltName extension.
func New(key crypto.Signer, names Names) ([]byte, error) {
	tmpl := &x509.CertificateRequest{}
	if len(names.URIs)+len(names.DNSNames) > 0 {
		san, err := SANExtension(names)
		if err != nil {
			return nil, err
		}
		tmpl.ExtraExtensions = []pkix.Extension{san}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("csrgen: %w", err)
	}
	return der, nil
}

// PEM is New, PEM-encoded.
func PEM(key crypto.Signer, names Names) (string, error) {
	der, err := New(key, names)
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), nil
}

// SANExtension encodes names as a critical subjectAltName extension.
func SANExtension(names Names) (pkix.Extension, error) {
	var gns []asn1.RawValue
	for _, d := range names.DNSNames {
		if d == "" {
			return pkix.Extension{}, errors.New("csrgen: empty DNS name")
		}
		gns = append(gns, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: tagDNS, Bytes: []byte(d)})
	}
	for _, u := range names.URIs {
		if u == nil || u.String() == "" {
			return pkix.Extension{}, errors.New("csrgen: empty URI")
		}
		gns = append(gns, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: tagURI, Bytes: []byte(u.String())})
	}
	b, err := asn1.Marshal(gns)
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("csrgen: encoding subjectAltName: %w", err)
	}
	return pkix.Extension{Id: oidSubjectAltName, Critical: true, Value: b}, nil
}
