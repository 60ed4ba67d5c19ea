// Package verify checks what a backend issued before any workload sees it:
// the leaf holds the requester's key, names exactly the approved identity
// and the approved subject, carries exactly the approved key usages, is no
// CA, keeps to the approved lifetime, and chains to the configured trust
// anchors. It also puts the chain into the shape the Istio agent
// expects: leaf first, root last, each certificate once.
package verify

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/dn"
	"github.com/meshca/broker/x509ext"
)

// ErrMismatch means the backend returned something the broker must not
// hand out. The server answers Internal and logs the details.
var ErrMismatch = errors.New("issued certificate does not match the approved request")

// Slack is how far a backend may round the approved NotAfter up (PKIs that
// count lifetime in whole minutes or days-with-time do), and how far its
// NotBefore may stray from the approved one (PKIs that set their own
// backdate, or the time of signing, do).
const Slack = 2 * time.Minute

// Chain verifies issued (leaf first, in any further order, duplicates and
// root allowed) against the approved request and the trust anchors, and
// returns the verified path from leaf to root.
func Chain(req *backends.Request, issued []*x509.Certificate, anchors []*x509.Certificate, now time.Time) ([]*x509.Certificate, error) {
	if len(issued) == 0 || issued[0] == nil {
		return nil, fmt.Errorf("%w: the backend returned no certificate", ErrMismatch)
	}
	if len(anchors) == 0 {
		return nil, fmt.Errorf("%w: no trust anchors configured to verify against", ErrMismatch)
	}
	leaf, tmpl := issued[0], req.Template
	if !samePublicKey(leaf.PublicKey, req.CSR.PublicKey) {
		return nil, fmt.Errorf("%w: leaf public key is not the one in the CSR", ErrMismatch)
	}
	if got, want := uris(leaf), uris(tmpl); !slices.Equal(got, want) {
		return nil, fmt.Errorf("%w: leaf URI SANs %v, approved %v", ErrMismatch, got, want)
	}
	if got, want := sorted(leaf.DNSNames), sorted(tmpl.DNSNames); !slices.Equal(got, want) {
		return nil, fmt.Errorf("%w: leaf DNS SANs %v, approved %v", ErrMismatch, got, want)
	}
	if len(leaf.IPAddresses) != 0 || len(leaf.EmailAddresses) != 0 {
		return nil, fmt.Errorf("%w: leaf carries IP or email SANs that were not approved", ErrMismatch)
	}
	if err := sameSubject(leaf, tmpl); err != nil {
		return nil, err
	}
	if leaf.IsCA {
		return nil, fmt.Errorf("%w: leaf is a CA certificate", ErrMismatch)
	}
	if leaf.NotAfter.After(tmpl.NotAfter.Add(Slack)) {
		return nil, fmt.Errorf("%w: leaf expires %s, approved until %s", ErrMismatch, leaf.NotAfter.UTC().Format(time.RFC3339), tmpl.NotAfter.UTC().Format(time.RFC3339))
	}
	// A PKI that ignores the requested NotBefore stamps the time it
	// signed, which lies between approval and now; earlier than approved
	// is a certificate backdated beyond policy.
	if leaf.NotBefore.Before(tmpl.NotBefore.Add(-Slack)) || leaf.NotBefore.After(now.Add(Slack)) {
		return nil, fmt.Errorf("%w: leaf valid from %s, approved from %s", ErrMismatch, leaf.NotBefore.UTC().Format(time.RFC3339), tmpl.NotBefore.UTC().Format(time.RFC3339))
	}
	if err := sameKeyUsage(leaf, tmpl); err != nil {
		return nil, err
	}
	if err := sameExtKeyUsage(leaf, tmpl); err != nil {
		return nil, err
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, a := range anchors {
		roots.AddCert(a)
	}
	for _, c := range issued[1:] {
		// A PKI that returns its root as well would otherwise offer the
		// path builder the same parent twice, and it checks the leaf's
		// signature once per candidate.
		if c != nil && !slices.ContainsFunc(anchors, c.Equal) {
			inter.AddCert(c)
		}
	}
	chains, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: chain does not verify to the trust anchors: %v", ErrMismatch, err)
	}
	// Several paths can exist when anchors overlap (a rotation in
	// progress); the shortest is what a relying party builds first.
	best := chains[0]
	for _, c := range chains[1:] {
		if len(c) < len(best) {
			best = c
		}
	}
	return best, nil
}

// Response is the CreateCertificate answer for a verified chain (leaf to
// anchor): the leaf and intermediates, one PEM certificate per entry, then
// the whole trust bundle as the last entry, as istiod answers. The anchor
// the chain ends in is in the bundle, so it is not repeated.
func Response(chain []*x509.Certificate, bundlePEM []byte) []string {
	out := PEM(chain[:len(chain)-1])
	return append(out, string(bundlePEM))
}

// PEM encodes a chain the way Istio's CA answers: one PEM certificate per
// entry, each ending in a newline.
func PEM(chain []*x509.Certificate) []string {
	out := make([]string, len(chain))
	for i, c := range chain {
		out[i] = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	return out
}

func samePublicKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

func uris(c *x509.Certificate) []string {
	out := make([]string, len(c.URIs))
	for i, u := range c.URIs {
		out[i] = u.String()
	}
	return out
}

func sorted(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

// sameSubject compares the leaf's raw subject with the approved one: every
// attribute with a value must have been approved (an empty-valued one, as
// the Istio agent's CSR carries and some PKIs copy, says nothing).
func sameSubject(leaf, tmpl *x509.Certificate) error {
	approved, err := dn.Of(tmpl)
	if err != nil {
		return fmt.Errorf("%w: approved %v", ErrMismatch, err)
	}
	same, err := dn.SameValues(leaf.RawSubject, approved)
	if err != nil {
		return fmt.Errorf("%w: leaf subject: %v", ErrMismatch, err)
	}
	if !same {
		got, _ := dn.Valued(leaf.RawSubject)
		want, _ := dn.Valued(approved)
		return fmt.Errorf("%w: leaf subject [%s], approved [%s]", ErrMismatch, dn.Describe(got), dn.Describe(want))
	}
	return nil
}

// sameKeyUsage wants the approved key usages exactly (keyEncipherment may
// be missing for a key that cannot encipher): x509ext.SameKeyUsage.
func sameKeyUsage(leaf, tmpl *x509.Certificate) error {
	if !x509ext.SameKeyUsage(leaf.KeyUsage, tmpl.KeyUsage, leaf.PublicKey) {
		return fmt.Errorf("%w: leaf key usage %s, approved %s", ErrMismatch, keyUsageNames(leaf.KeyUsage), keyUsageNames(tmpl.KeyUsage))
	}
	return nil
}

// sameExtKeyUsage wants exactly the approved extended key usages: no
// missing one (the mesh needs both TLS usages), no extra one, no
// anyExtendedKeyUsage, no usage Go does not know.
func sameExtKeyUsage(leaf, tmpl *x509.Certificate) error {
	got, want := slices.Clone(leaf.ExtKeyUsage), slices.Clone(tmpl.ExtKeyUsage)
	slices.Sort(got)
	slices.Sort(want)
	got, want = slices.Compact(got), slices.Compact(want)
	if !slices.Equal(got, want) || len(leaf.UnknownExtKeyUsage) != len(tmpl.UnknownExtKeyUsage) {
		return fmt.Errorf("%w: leaf extended key usage %s, approved %s", ErrMismatch, extKeyUsageNames(leaf), extKeyUsageNames(tmpl))
	}
	for i, oid := range leaf.UnknownExtKeyUsage {
		if !oid.Equal(tmpl.UnknownExtKeyUsage[i]) {
			return fmt.Errorf("%w: leaf extended key usage %s, approved %s", ErrMismatch, extKeyUsageNames(leaf), extKeyUsageNames(tmpl))
		}
	}
	return nil
}

func keyUsageNames(ku x509.KeyUsage) string {
	if names := x509ext.KeyUsageNames(ku); len(names) > 0 {
		return fmt.Sprint(names)
	}
	return "[none]"
}

var extKeyUsageName = map[x509.ExtKeyUsage]string{
	x509.ExtKeyUsageAny:             "any",
	x509.ExtKeyUsageServerAuth:      "serverAuth",
	x509.ExtKeyUsageClientAuth:      "clientAuth",
	x509.ExtKeyUsageCodeSigning:     "codeSigning",
	x509.ExtKeyUsageEmailProtection: "emailProtection",
	x509.ExtKeyUsageTimeStamping:    "timeStamping",
	x509.ExtKeyUsageOCSPSigning:     "OCSPSigning",
}

func extKeyUsageNames(c *x509.Certificate) string {
	var names []string
	for _, u := range c.ExtKeyUsage {
		if n, ok := extKeyUsageName[u]; ok {
			names = append(names, n)
		} else {
			names = append(names, fmt.Sprintf("eku(%d)", u))
		}
	}
	for _, oid := range c.UnknownExtKeyUsage {
		names = append(names, oid.String())
	}
	if len(names) == 0 {
		return "[none]"
	}
	return fmt.Sprint(names)
}
