// Package policy decides what a certificate may say. Given an authenticated
// identity and the caller's CSR it either refuses, naming what was wrong,
// or returns the certificate template to sign: exactly the caller's SPIFFE
// ID, an empty subject, a bounded lifetime, TLS usages, never a CA. Nothing
// from the CSR but its public key reaches the template, and a CSR asking
// for more (a subject, other names, other usages) is refused, because some
// PKIs copy from the CSR whatever the broker leaves unsaid.
package policy

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshca/broker/authn"
	"github.com/meshca/broker/dn"
	"github.com/meshca/broker/x509ext"
)

var (
	// ErrInvalid: the request is malformed (maps to InvalidArgument).
	ErrInvalid = errors.New("invalid request")
	// ErrDenied: the request is well-formed but asks for something the
	// caller may not have (maps to PermissionDenied).
	ErrDenied = errors.New("not allowed")
)

// OverMax says what happens to a requested lifetime outside the bounds.
type OverMax string

const (
	// Clamp issues the nearest allowed lifetime.
	Clamp OverMax = "clamp"
	// Refuse refuses the request.
	Refuse OverMax = "refuse"
)

// Keys is the allow-list of subject public keys.
type Keys struct {
	RSAMinBits  int      `json:"rsaMinBits"`
	RSAMaxBits  int      `json:"rsaMaxBits"`
	ECDSACurves []string `json:"ecdsaCurves"`
	Ed25519     bool     `json:"ed25519"`
}

// Config is the policy's configuration.
type Config struct {
	TrustDomain        spiffeid.TrustDomain
	TrustDomainAliases []spiffeid.TrustDomain
	DefaultTTL         time.Duration
	MinTTL             time.Duration
	MaxTTL             time.Duration
	OutOfBounds        OverMax
	// Backdate moves NotBefore into the past to absorb clock skew between
	// the broker and the workloads.
	Backdate         time.Duration
	Keys             Keys
	MaxCSRBytes      int
	MaxMetadataBytes int
}

// Defaults returns the configuration used when nothing is set: Istio's
// workload defaults (24h certificates) with RSA 2048-8192 and ECDSA
// P-256/P-384 keys.
func Defaults() Config {
	return Config{
		TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"),
		DefaultTTL:  24 * time.Hour,
		MinTTL:      10 * time.Minute,
		MaxTTL:      24 * time.Hour,
		OutOfBounds: Clamp,
		Backdate:    time.Minute,
		Keys: Keys{
			RSAMinBits:  2048,
			RSAMaxBits:  8192,
			ECDSACurves: []string{"P-256", "P-384"},
		},
		MaxCSRBytes:      16 << 10,
		MaxMetadataBytes: 4 << 10,
	}
}

// Validate checks the configuration for internal consistency.
func (c Config) Validate() error {
	switch {
	case c.TrustDomain.IsZero():
		return errors.New("trustDomain: must be set")
	case c.MinTTL <= 0:
		return errors.New("policy.minTTL: must be positive")
	case c.MaxTTL < c.MinTTL:
		return fmt.Errorf("policy.maxTTL (%s) is below policy.minTTL (%s)", c.MaxTTL, c.MinTTL)
	case c.DefaultTTL < c.MinTTL || c.DefaultTTL > c.MaxTTL:
		return fmt.Errorf("policy.defaultTTL (%s) must lie between minTTL (%s) and maxTTL (%s)", c.DefaultTTL, c.MinTTL, c.MaxTTL)
	case c.OutOfBounds != Clamp && c.OutOfBounds != Refuse:
		return fmt.Errorf("policy.ttlOutOfBounds: %q is neither %q nor %q", c.OutOfBounds, Clamp, Refuse)
	case c.Backdate < 0 || c.Backdate > time.Hour:
		return fmt.Errorf("policy.backdate: %s is outside 0..1h", c.Backdate)
	case c.Keys.RSAMinBits != 0 && c.Keys.RSAMinBits < 2048:
		return fmt.Errorf("policy.keys.rsaMinBits: %d is below 2048", c.Keys.RSAMinBits)
	case c.Keys.RSAMaxBits < c.Keys.RSAMinBits:
		return fmt.Errorf("policy.keys.rsaMaxBits (%d) is below rsaMinBits (%d)", c.Keys.RSAMaxBits, c.Keys.RSAMinBits)
	case c.MaxCSRBytes <= 0 || c.MaxMetadataBytes <= 0:
		return errors.New("policy.maxCSRBytes and policy.maxMetadataBytes must be positive")
	}
	for _, curve := range c.Keys.ECDSACurves {
		if curveByName(curve) == nil {
			return fmt.Errorf("policy.keys.ecdsaCurves: unknown curve %q (known: P-256, P-384, P-521)", curve)
		}
	}
	return nil
}

// Policy applies a Config.
type Policy struct {
	cfg Config
	now func() time.Time
}

// New returns a policy for cfg, which must be valid.
func New(cfg Config) (*Policy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Policy{cfg: cfg, now: time.Now}, nil
}

// Request is what the caller asked for.
type Request struct {
	CSRPEM          string
	ValiditySeconds int64
	Metadata        *structpb.Struct
}

// Decision is an approved request: the CSR it is for and the certificate
// to sign.
type Decision struct {
	ID       spiffeid.ID
	CSR      *x509.CertificateRequest
	Template *x509.Certificate
	// Requested and Granted lifetimes, for audit.
	Requested, Granted time.Duration
}

// Metadata keys the Istio agent may send. Impersonation is how istiod lets
// node agents (ztunnel) ask for other workloads' certificates; the broker
// does not grant it, so a request carrying it fails closed.
const (
	metaImpersonatedIdentity = "ImpersonatedIdentity"
	metaCertSigner           = "CertSigner"
)

// Authorize decides what certificate, if any, id may have for req.
func (p *Policy) Authorize(id *authn.Identity, req Request) (*Decision, error) {
	if id == nil || id.ID.IsZero() {
		return nil, fmt.Errorf("%w: no authenticated identity", ErrDenied)
	}
	if id.ID.TrustDomain() != p.cfg.TrustDomain {
		return nil, fmt.Errorf("%w: identity %s is not in trust domain %s", ErrDenied, id.ID, p.cfg.TrustDomain)
	}
	if err := p.checkMetadata(id, req.Metadata); err != nil {
		return nil, err
	}
	csr, err := p.parseCSR(req.CSRPEM)
	if err != nil {
		return nil, err
	}
	if err := p.checkKey(csr.PublicKey); err != nil {
		return nil, err
	}
	if err := checkSubject(csr); err != nil {
		return nil, err
	}
	if err := p.checkNames(id.ID, csr); err != nil {
		return nil, err
	}
	if err := checkExtensions(csr); err != nil {
		return nil, err
	}
	requested, granted, err := p.lifetime(req.ValiditySeconds)
	if err != nil {
		return nil, err
	}
	now := p.now().Truncate(time.Second)
	if granted, err = capped(id, now, granted); err != nil {
		return nil, err
	}
	return &Decision{
		ID:        id.ID,
		CSR:       csr,
		Template:  WorkloadTemplate(id.ID, now.Add(-p.cfg.Backdate), now.Add(granted)),
		Requested: requested,
		Granted:   granted,
	}, nil
}

// WorkloadTemplate is the certificate Istio's own CA issues a workload: an
// empty subject, the SPIFFE ID as the only SAN (Go marks the SAN extension
// critical because the subject is empty, as RFC 5280 requires and as Istio
// does), TLS server and client usages, not a CA.
func WorkloadTemplate(id spiffeid.ID, notBefore, notAfter time.Time) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{},
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              workloadKeyUsage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
	}
}

// ServingTemplate is the broker's own TLS serving certificate. It has the
// workloads' usages (serverAuth and clientAuth), so that the one PKI-side
// template or role that issues workload certificates, which usually fixes
// both, issues it too; verification then wants exactly what was approved.
func ServingTemplate(dnsNames []string, notBefore, notAfter time.Time) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{},
		DNSNames:              slices.Clone(dnsNames),
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              workloadKeyUsage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
}

// TrustDomain is the trust domain certificates are issued in.
func (p *Policy) TrustDomain() spiffeid.TrustDomain { return p.cfg.TrustDomain }

func (p *Policy) checkMetadata(id *authn.Identity, md *structpb.Struct) error {
	if md == nil {
		return nil
	}
	if n := proto.Size(md); n > p.cfg.MaxMetadataBytes {
		return fmt.Errorf("%w: metadata is %d bytes, more than the %d allowed", ErrInvalid, n, p.cfg.MaxMetadataBytes)
	}
	for k, v := range md.GetFields() {
		switch k {
		case metaImpersonatedIdentity:
			_, isNull := v.GetKind().(*structpb.Value_NullValue)
			empty := isNull || (v.GetKind() != nil && v.GetStringValue() == "" && isString(v))
			// Only an identity the impersonation step granted (a node
			// agent's, for a pod on its node) may come with it, and only
			// for the identity it names.
			if !empty && (id.NodeAgent == nil || !isString(v) || !p.names(id.ID, v.GetStringValue())) {
				return fmt.Errorf("%w: metadata %s: a certificate for another identity is issued only to a trusted node agent for a workload on its node", ErrDenied, k)
			}
		case metaCertSigner:
			if _, ok := v.GetKind().(*structpb.Value_StringValue); !ok && v.GetKind() != nil {
				return fmt.Errorf("%w: metadata %s must be a string", ErrInvalid, k)
			}
		}
	}
	return nil
}

func (p *Policy) parseCSR(s string) (*x509.CertificateRequest, error) {
	if s == "" {
		return nil, fmt.Errorf("%w: csr is empty", ErrInvalid)
	}
	if len(s) > p.cfg.MaxCSRBytes {
		return nil, fmt.Errorf("%w: csr is %d bytes, more than the %d allowed", ErrInvalid, len(s), p.cfg.MaxCSRBytes)
	}
	block, rest := pem.Decode([]byte(s))
	if block == nil {
		return nil, fmt.Errorf("%w: csr is not PEM encoded", ErrInvalid)
	}
	if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("%w: csr PEM block is %q, want \"CERTIFICATE REQUEST\"", ErrInvalid, block.Type)
	}
	if len(strings.TrimSpace(string(rest))) != 0 {
		return nil, fmt.Errorf("%w: csr has data after the PEM block", ErrInvalid)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: csr does not parse: %v", ErrInvalid, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: csr signature does not verify: %v", ErrInvalid, err)
	}
	return csr, nil
}

func curveByName(name string) elliptic.Curve {
	switch name {
	case "P-256":
		return elliptic.P256()
	case "P-384":
		return elliptic.P384()
	case "P-521":
		return elliptic.P521()
	}
	return nil
}

func (p *Policy) checkKey(pub any) error {
	k := p.cfg.Keys
	switch key := pub.(type) {
	case *rsa.PublicKey:
		bits := key.N.BitLen()
		if k.RSAMinBits == 0 || bits < k.RSAMinBits || bits > k.RSAMaxBits {
			return fmt.Errorf("%w: csr public key: RSA-%d is not allowed (allowed: RSA %d to %d bits, ECDSA %v)", ErrDenied, bits, k.RSAMinBits, k.RSAMaxBits, k.ECDSACurves)
		}
	case *ecdsa.PublicKey:
		name := key.Curve.Params().Name
		if !slices.Contains(k.ECDSACurves, name) {
			return fmt.Errorf("%w: csr public key: ECDSA %s is not allowed (allowed curves: %v)", ErrDenied, name, k.ECDSACurves)
		}
	case ed25519.PublicKey:
		if !k.Ed25519 {
			return fmt.Errorf("%w: csr public key: Ed25519 is not allowed", ErrDenied)
		}
	default:
		return fmt.Errorf("%w: csr public key: unsupported type %T", ErrDenied, pub)
	}
	return nil
}

// checkNames allows a CSR to name nothing, or exactly the caller's SPIFFE
// ID (in the primary trust domain or an alias of it). Every other name is
// refused rather than dropped, so a compromised workload learns at once
// that asking for more does not work.
func (p *Policy) checkNames(id spiffeid.ID, csr *x509.CertificateRequest) error {
	switch {
	case len(csr.DNSNames) > 0:
		return fmt.Errorf("%w: csr DNS names %v: only the caller's SPIFFE ID %s may be requested", ErrDenied, csr.DNSNames, id)
	case len(csr.IPAddresses) > 0:
		return fmt.Errorf("%w: csr IP addresses %v: only the caller's SPIFFE ID %s may be requested", ErrDenied, csr.IPAddresses, id)
	case len(csr.EmailAddresses) > 0:
		return fmt.Errorf("%w: csr email addresses %v: only the caller's SPIFFE ID %s may be requested", ErrDenied, csr.EmailAddresses, id)
	case len(csr.URIs) > 1:
		return fmt.Errorf("%w: csr URI SANs: %d requested, only the caller's SPIFFE ID %s may be", ErrDenied, len(csr.URIs), id)
	}
	for _, u := range csr.URIs {
		if !p.sameWorkload(id, u) {
			return fmt.Errorf("%w: csr URI SAN %q: the caller is %s", ErrDenied, u.String(), id)
		}
	}
	return nil
}

// names reports whether s is id, in the primary or an alias trust domain.
func (p *Policy) names(id spiffeid.ID, s string) bool {
	u, err := url.Parse(s)
	return err == nil && p.sameWorkload(id, u)
}

func (p *Policy) sameWorkload(id spiffeid.ID, u *url.URL) bool {
	got, err := spiffeid.FromURI(u)
	if err != nil || got.Path() != id.Path() {
		return false
	}
	// The URL must be exactly the canonical form: no query, fragment,
	// user info, port or different spelling that a relying party might
	// read differently.
	if u.String() != got.String() {
		return false
	}
	td := got.TrustDomain()
	return td == p.cfg.TrustDomain || slices.Contains(p.cfg.TrustDomainAliases, td)
}

// checkSubject refuses a CSR whose subject says anything. The certificate
// never carries a subject (the SPIFFE ID is the identity), but a PKI that
// fills in what the broker leaves unsaid (AWS Private CA's passthrough
// templates, Google CAS's pem_csr, Vault's sign-verbatim) would copy it,
// and relying parties that authorize by DN (Kubernetes, Kafka, PostgreSQL)
// would read it as an identity. It is judged on the raw bytes, every RDN
// and attribute type, because Go's parsed Name drops types such as DC and
// UID. Empty-valued attributes say nothing and are accepted: the Istio
// agent's CSRs carry an empty O.
func checkSubject(csr *x509.CertificateRequest) error {
	valued, err := dn.Valued(csr.RawSubject)
	if err != nil {
		return fmt.Errorf("%w: csr subject: %v", ErrInvalid, err)
	}
	if len(valued) > 0 {
		return fmt.Errorf("%w: csr subject attribute %s: a workload certificate's subject is always empty (its identity is the SPIFFE ID); send a CSR without subject attributes", ErrDenied, dn.Describe(valued))
	}
	return nil
}

var (
	oidExtSubjectAltName   = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidExtKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtExtKeyUsage      = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidExtBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
)

// checkExtensions refuses CSR extensions the broker does not understand,
// a CA request, and SAN entries of kinds Go's parser silently drops
// (otherName, directoryName, registeredID...), which would otherwise slip
// past the name check.
func checkExtensions(csr *x509.CertificateRequest) error {
	for _, ext := range csr.Extensions {
		switch {
		case ext.Id.Equal(oidExtSubjectAltName):
			if err := checkSANKinds(ext.Value); err != nil {
				return err
			}
		case ext.Id.Equal(oidExtKeyUsage):
			if err := checkRequestedKeyUsage(ext.Value); err != nil {
				return err
			}
		case ext.Id.Equal(oidExtExtKeyUsage):
			if err := checkRequestedExtKeyUsage(ext.Value); err != nil {
				return err
			}
		case ext.Id.Equal(oidExtBasicConstraints):
			var bc struct {
				IsCA       bool `asn1:"optional"`
				MaxPathLen int  `asn1:"optional,default:-1"`
			}
			if rest, err := asn1.Unmarshal(ext.Value, &bc); err != nil || len(rest) != 0 {
				return fmt.Errorf("%w: csr basic constraints extension is malformed", ErrInvalid)
			}
			if bc.IsCA {
				return fmt.Errorf("%w: csr requests a CA certificate (basicConstraints CA:true)", ErrDenied)
			}
		default:
			return fmt.Errorf("%w: csr extension %s is not allowed", ErrDenied, ext.Id)
		}
	}
	return nil
}

// Usages are decided by policy, and a request within them is ignored (some
// clients always send one). A request beyond them is refused: PKIs that
// copy CSR extensions (Vault's sign-verbatim) would grant it.
var (
	workloadKeyUsage     = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	oidExtKeyUsageServer = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 1}
	oidExtKeyUsageClient = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2}
)

func checkRequestedKeyUsage(der []byte) error {
	ku, err := x509ext.ParseKeyUsage(der)
	switch {
	case errors.Is(err, x509ext.ErrUndefined):
		return fmt.Errorf("%w: csr key usage: %v", ErrDenied, err)
	case err != nil:
		return fmt.Errorf("%w: csr key usage extension is malformed", ErrInvalid)
	}
	if extra := ku &^ workloadKeyUsage; extra != 0 {
		return fmt.Errorf("%w: csr requests key usage %s; a workload certificate may have only digitalSignature and keyEncipherment", ErrDenied, strings.Join(x509ext.KeyUsageNames(extra), ", "))
	}
	return nil
}

func checkRequestedExtKeyUsage(der []byte) error {
	var oids []asn1.ObjectIdentifier
	if rest, err := asn1.Unmarshal(der, &oids); err != nil || len(rest) != 0 {
		return fmt.Errorf("%w: csr extended key usage extension is malformed", ErrInvalid)
	}
	for _, oid := range oids {
		if !oid.Equal(oidExtKeyUsageServer) && !oid.Equal(oidExtKeyUsageClient) {
			return fmt.Errorf("%w: csr requests extended key usage %s; a workload certificate may have only serverAuth and clientAuth", ErrDenied, oid)
		}
	}
	return nil
}

// SAN GeneralName tags (RFC 5280 4.2.1.6) the name check understands.
const (
	sanEmail = 1
	sanDNS   = 2
	sanURI   = 6
	sanIP    = 7
)

func checkSANKinds(der []byte) error {
	var names []asn1.RawValue
	if rest, err := asn1.Unmarshal(der, &names); err != nil || len(rest) != 0 {
		return fmt.Errorf("%w: csr subject alternative name extension is malformed", ErrInvalid)
	}
	for _, n := range names {
		if n.Class != asn1.ClassContextSpecific {
			return fmt.Errorf("%w: csr subject alternative name extension is malformed", ErrInvalid)
		}
		switch n.Tag {
		case sanEmail, sanDNS, sanURI, sanIP:
		default:
			return fmt.Errorf("%w: csr subject alternative name of kind %d (otherName, directoryName, registeredID...) is not allowed", ErrDenied, n.Tag)
		}
	}
	return nil
}

func (p *Policy) lifetime(seconds int64) (requested, granted time.Duration, err error) {
	if seconds < 0 {
		return 0, 0, fmt.Errorf("%w: validity_duration %d is negative", ErrInvalid, seconds)
	}
	if seconds == 0 {
		return 0, p.cfg.DefaultTTL, nil
	}
	// Anything beyond 100 years would overflow time.Duration arithmetic.
	if seconds > 100*365*24*3600 {
		return 0, 0, fmt.Errorf("%w: validity_duration %d seconds is absurdly long", ErrInvalid, seconds)
	}
	requested = time.Duration(seconds) * time.Second
	switch {
	case requested > p.cfg.MaxTTL && p.cfg.OutOfBounds == Refuse:
		return requested, 0, fmt.Errorf("%w: validity_duration %s exceeds the maximum %s", ErrDenied, requested, p.cfg.MaxTTL)
	case requested > p.cfg.MaxTTL:
		return requested, p.cfg.MaxTTL, nil
	case requested < p.cfg.MinTTL && p.cfg.OutOfBounds == Refuse:
		return requested, 0, fmt.Errorf("%w: validity_duration %s is below the minimum %s", ErrDenied, requested, p.cfg.MinTTL)
	case requested < p.cfg.MinTTL:
		return requested, p.cfg.MinTTL, nil
	}
	return requested, requested, nil
}

// minRenewal is the shortest certificate a renewal within the presented
// certificate's lifetime is worth issuing.
const minRenewal = time.Minute

// capped shortens a lifetime to what the credential allows (id.NotAfter:
// a renewal by certificate never outlives the certificate presented). The
// bound wins over minTTL: it is a security bound, minTTL an operational
// one.
func capped(id *authn.Identity, now time.Time, granted time.Duration) (time.Duration, error) {
	if id.NotAfter.IsZero() {
		return granted, nil
	}
	left := id.NotAfter.Truncate(time.Second).Sub(now)
	if left < minRenewal {
		return 0, fmt.Errorf("%w: the presented certificate expires at %s; renewal by certificate cannot extend it, so authenticate with the service-account token", ErrDenied, id.NotAfter.UTC().Format(time.RFC3339))
	}
	return min(granted, left), nil
}

func isString(v *structpb.Value) bool {
	_, ok := v.GetKind().(*structpb.Value_StringValue)
	return ok
}
