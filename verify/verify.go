// Package verify checks what a backend issued before any workload sees it:
// the leaf holds the requester's key, names exactly the approved identity,
// is no CA, keeps to the approved lifetime, and chains to the configured
// trust anchors. It also puts the chain into the shape the Istio agent
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
)

// ErrMismatch means the backend returned something the broker must not
// hand out. The server answers Internal and logs the details.
var ErrMismatch = errors.New("issued certificate does not match the approved request")

// Slack is how far a backend may round the approved NotAfter up (PKIs that
// count lifetime in whole minutes or days-with-time do).
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
	if leaf.IsCA {
		return nil, fmt.Errorf("%w: leaf is a CA certificate", ErrMismatch)
	}
	if leaf.NotAfter.After(tmpl.NotAfter.Add(Slack)) {
		return nil, fmt.Errorf("%w: leaf expires %s, approved until %s", ErrMismatch, leaf.NotAfter.UTC().Format(time.RFC3339), tmpl.NotAfter.UTC().Format(time.RFC3339))
	}
	if len(leaf.ExtKeyUsage) > 0 {
		for _, u := range tmpl.ExtKeyUsage {
			if !slices.Contains(leaf.ExtKeyUsage, u) && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny) {
				return nil, fmt.Errorf("%w: leaf lacks extended key usage %d that the mesh needs", ErrMismatch, u)
			}
		}
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, a := range anchors {
		roots.AddCert(a)
	}
	for _, c := range issued[1:] {
		if c != nil {
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
