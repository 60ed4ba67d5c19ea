// Package awspca is a fake AWS Private CA (ACM PCA) for tests: an HTTP
// server on 127.0.0.1 that speaks the service's real wire protocol, so the
// unmodified aws-sdk-go-v2 acmpca client can be pointed at it with
// BaseEndpoint, and a real in-memory CA (a root and the subordinate CA the
// fake's ARN names) behind it.
//
// What it reproduces, from the SDK's serializers, the API reference and
// reports of the real service's behaviour:
//   - awsJson1_1: POST /, X-Amz-Target ACMPrivateCA.<Operation>, Content-Type
//     application/x-amz-json-1.1, blobs as base64, timestamps as epoch
//     seconds, errors as HTTP 400 with X-Amzn-ErrorType and
//     {"__type","message"}, an x-amzn-RequestId on every answer;
//   - SigV4: the Authorization header must be present, scoped to the fake's
//     region and acm-pca, for a known access key, within five minutes, and
//     its signature must verify over the signed headers and the body;
//   - DescribeCertificateAuthority, GetCertificateAuthorityCertificate
//     (Certificate is the subordinate, CertificateChain the root),
//     IssueCertificate, GetCertificate (Certificate is the leaf,
//     CertificateChain the subordinate then the root);
//   - IssueCertificate's checks: CSR must be PEM, parse and carry a valid
//     signature (MalformedCSRException); a CSR with an empty subject and a
//     non-critical subjectAltName is refused with the message users report
//     from the real service (see "Empty subjects" below); SigningAlgorithm
//     must match the CA key family; Validity (ABSOLUTE, END_DATE, DAYS,
//     MONTHS, YEARS) must be in the future and within the CA's validity;
//     ValidityNotBefore ABSOLUTE;
//   - templates: the EndEntity*, EndEntityClientAuth*, EndEntityServerAuth*
//     and BlankEndEntity* families; ApiPassthrough is honoured only by
//     *APIPassthrough and *APICSRPassthrough templates, the template's own
//     key usages win over passthrough ones, and subject and SANs come "from
//     API or CSR": from the passthrough when given there, else copied from
//     the CSR. The subject is copied as the CSR's raw DER, byte for byte:
//     every RDN and attribute type (emailAddress, DC, UID, ...), multi-valued
//     RDNs and whatever string types the CSR used, not what crypto/x509's
//     parsed Name keeps;
//   - IdempotencyToken: the same token on the same CA within five minutes
//     returns the first call's CertificateArn without issuing again;
//   - issuance is asynchronous: GetCertificate answers
//     RequestInProgressException for the first N polls (SetInProgressPolls)
//     and until a set time after IssueCertificate (SetIssueLatency);
//   - lost answers (DropAnswers: the work is done, the connection closed);
//   - throttling (ThrottlingException "Rate exceeded") for the next K calls
//     (Throttle) or beyond a per-operation rate (SetRateLimit), as the real
//     service's per-operation request rate quotas answer; a hard quota
//     (LimitExceededException once a number of certificates is issued,
//     SetHardQuota); CA state (SetStatus: a non-ACTIVE CA refuses with
//     InvalidStateException), and an outage switch that either drops every
//     connection or answers 503 ServiceUnavailable (SetOutage);
//   - a misbehaving CA that puts a subject of its own into every leaf
//     (SetInjectSubject), for testing that the broker's verification
//     catches it.
//
// Every knob is safe to use while requests are in flight; Calls and
// IssuedCount are exact under concurrency.
//
// # Empty subjects
//
// RFC 5280 wants a certificate whose subject is an empty sequence to carry
// its names in a critical subjectAltName extension, and Private CA applies
// that to the CSR: "CSR must mark the SAN extension critical when it has an
// empty subject." (cert-manager/istio-csr #90 and #546, istio/istio #56191,
// aws-privateca-issuer #6). "Empty" here is what RFC 5280 says: a Name with
// no RDN at all. A subject holding only an empty-valued attribute, such as
// the "O=" the Istio agent sends, has an RDN and is not empty for this rule,
// whatever the SAN's criticality. Every reported refusal is of a CSR with no
// RDN at all (ztunnel's, cert-manager's without a common name), and a
// certificate issued for an Istio CSR has subject "O=" (istio-csr #168);
// that an "O=" CSR with a non-critical SAN passes is the fake's reading, not
// something AWS documents (Istio's own CSRs mark the SAN critical anyway).
//
// Whether the real service skips this check when ApiPassthrough supplies
// the names is not documented either: by default the fake skips it then;
// Options.StrictEmptySubject applies it to every CSR, whatever the template
// and ApiPassthrough carry (names, a subject or nothing), the broker's own
// CSRs included; it is the stricter reading, the one to test against.
//
// What it does not reproduce: IAM and resource policies (every known key
// may do everything), cross-account sharing and RAM, CRL/OCSP and AIA
// extensions, certificate policies and most custom extensions, the exact
// wording of errors other than the empty-subject one and "Rate exceeded"
// (the LimitExceededException message is made up), the real quotas, rates
// and latencies (the knobs above set them), audit reports, and any
// operation not listed above (answered with UnknownOperationException).
package awspca

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meshca/broker/integration/fakes/netfault"
	"github.com/meshca/broker/integration/fakes/quota"
)

// Default static credentials the fake accepts.
const (
	DefaultAccessKeyID     = "AKIAFAKEPCA0EXAMPLE0"
	DefaultSecretAccessKey = "fakeSecretKey/forTheFakePrivateCA/EXAMPLE"
)

// Options configure a fake. Zero values pick the defaults.
type Options struct {
	// Region the fake is in (default us-east-1); SigV4 scopes must name it.
	Region string
	// Account in the ARNs (default 111122223333).
	Account string
	// KeyAlgorithm of the CA: RSA_2048 (default), RSA_3072, RSA_4096,
	// EC_prime256v1, EC_secp384r1 or EC_secp521r1.
	KeyAlgorithm string
	// Credentials maps access key IDs to secret keys (default: the
	// DefaultAccessKeyID / DefaultSecretAccessKey pair).
	Credentials map[string]string
	// StrictEmptySubject refuses every CSR whose subject is empty (no RDN)
	// and whose SAN extension is not critical, even when ApiPassthrough
	// carries the names (see "Empty subjects" in the package doc).
	StrictEmptySubject bool
	// CAValidity is the subordinate CA's remaining lifetime (default 30 days).
	CAValidity time.Duration
}

// OutageMode says how the fake fails while it is "down".
type OutageMode int

const (
	// NoOutage serves normally.
	NoOutage OutageMode = iota
	// OutageDrop closes every open connection and every new one as soon
	// as it is accepted, as a dead load balancer target does.
	OutageDrop
	// Outage503 answers every request with HTTP 503 ServiceUnavailable.
	Outage503
)

// Server is a running fake.
type Server struct {
	// URL is the endpoint to give the SDK (http://127.0.0.1:PORT).
	URL string
	// CAArn names the fake's subordinate CA.
	CAArn string

	opts Options
	ca   *hierarchy
	srv  *http.Server
	ln   *netfault.Listener

	mu          sync.Mutex
	outage      OutageMode
	status      string
	certs       map[string]*issued
	tokens      map[string]tokenEntry
	inProgress  int
	calls       map[string]int
	issuedCount int
	lastIssue   *IssueRequest
	dropAnswers map[string]int

	injectSubject []byte
	issueLatency  time.Duration
	hardQuota     int

	quota quota.Quota
}

type issued struct {
	leafPEM   string
	pollsLeft int
	readyAt   time.Time
}

type tokenEntry struct {
	arn     string
	expires time.Time
}

// Start creates the CA and starts serving on 127.0.0.1 (a free port).
func Start(opts Options) (*Server, error) {
	if opts.Region == "" {
		opts.Region = "us-east-1"
	}
	if opts.Account == "" {
		opts.Account = "111122223333"
	}
	if opts.KeyAlgorithm == "" {
		opts.KeyAlgorithm = "RSA_2048"
	}
	if opts.Credentials == nil {
		opts.Credentials = map[string]string{DefaultAccessKeyID: DefaultSecretAccessKey}
	}
	if opts.CAValidity <= 0 {
		opts.CAValidity = 30 * 24 * time.Hour
	}
	ca, err := newHierarchy(opts.KeyAlgorithm, opts.CAValidity)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("fake awspca: listening: %w", err)
	}
	s := &Server{
		URL:    "http://" + l.Addr().String(),
		CAArn:  fmt.Sprintf("arn:aws:acm-pca:%s:%s:certificate-authority/%s", opts.Region, opts.Account, newUUID()),
		opts:   opts,
		ca:     ca,
		ln:     netfault.New(l),
		status: "ACTIVE",
		certs:  map[string]*issued{},
		tokens: map[string]tokenEntry{},
		calls:  map[string]int{},

		dropAnswers: map[string]int{},
	}
	s.srv = &http.Server{Handler: http.HandlerFunc(s.handle), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(s.ln) }()
	return s, nil
}

// Close stops the server and drops its connections.
func (s *Server) Close() error {
	s.ln.SetDropping(true)
	return s.srv.Close()
}

// Root is the CA hierarchy's self-signed root.
func (s *Server) Root() *x509.Certificate { return s.ca.root }

// Subordinate is the issuing CA's certificate.
func (s *Server) Subordinate() *x509.Certificate { return s.ca.sub }

// SetInProgressPolls makes each certificate issued from now on answer
// RequestInProgressException to its first n GetCertificate calls.
func (s *Server) SetInProgressPolls(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inProgress = n
}

// Throttle answers the next n calls of the named operations (of every
// operation when none is named) with ThrottlingException.
func (s *Server) Throttle(n int, operations ...string) { s.quota.Throttle(n, operations...) }

// DropAnswers makes the next n calls of an operation do their work and
// then close the connection without answering, as when a response is lost
// on the way back: the case idempotency tokens exist for.
func (s *Server) DropAnswers(operation string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropAnswers[operation] = n
}

// SetStatus sets the CA's status (ACTIVE, DISABLED, EXPIRED...); only an
// ACTIVE CA issues.
func (s *Server) SetStatus(status string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status = status
}

// SetOutage switches the outage on (OutageDrop, Outage503) or off.
func (s *Server) SetOutage(m OutageMode) {
	s.mu.Lock()
	s.outage = m
	s.mu.Unlock()
	s.ln.SetDropping(m == OutageDrop)
}

// SetIssueLatency makes each certificate issued from now on fetchable only
// d after its IssueCertificate: until then GetCertificate answers
// RequestInProgressException, as a slow CA does. Zero turns it off.
func (s *Server) SetIssueLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.issueLatency = d
}

// SetRateLimit limits every operation, each on its own, to perSecond calls
// a second with bursts of burst (at least 1); calls beyond it answer
// ThrottlingException "Rate exceeded", as the real service's per-operation
// request rates do. Throttled calls count in Calls. perSecond <= 0 turns
// the limit off. Every SetRateLimit starts each operation with a full bucket.
func (s *Server) SetRateLimit(perSecond float64, burst int) { s.quota.SetRate(perSecond, burst) }

// SetHardQuota makes IssueCertificate answer LimitExceededException once n
// certificates have been issued (IssuedCount, counted since Start), as
// Private CA does when an account quota such as the number of certificates
// a CA may issue is used up. An idempotent replay of an earlier call still
// answers its certificate. n <= 0 turns the quota off.
func (s *Server) SetHardQuota(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hardQuota = n
}

// SetInjectSubject makes every leaf issued from now on carry raw (a DER
// Name) as its subject, whatever the CSR and ApiPassthrough say: a CA
// misbehaving in a way the broker must catch. nil turns it off.
func (s *Server) SetInjectSubject(raw []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.injectSubject = bytes.Clone(raw)
}

// Calls reports how many requests named an operation, failed ones included.
func (s *Server) Calls(operation string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[operation]
}

// IssuedCount reports how many certificates were actually signed (an
// idempotent replay does not count).
func (s *Server) IssuedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issuedCount
}

// LastIssueRequest returns the last IssueCertificate request as decoded.
func (s *Server) LastIssueRequest() *IssueRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastIssue
}

// IssueRequest is IssueCertificate's input as it appears on the wire.
type IssueRequest struct {
	ApiPassthrough          *APIPassthrough `json:"ApiPassthrough,omitempty"`
	CertificateAuthorityArn string          `json:"CertificateAuthorityArn"`
	Csr                     []byte          `json:"Csr"`
	IdempotencyToken        string          `json:"IdempotencyToken,omitempty"`
	SigningAlgorithm        string          `json:"SigningAlgorithm"`
	TemplateArn             string          `json:"TemplateArn,omitempty"`
	Validity                *Validity       `json:"Validity"`
	ValidityNotBefore       *Validity       `json:"ValidityNotBefore,omitempty"`
}

// APIPassthrough is the ApiPassthrough structure.
type APIPassthrough struct {
	Extensions *Extensions  `json:"Extensions,omitempty"`
	Subject    *ASN1Subject `json:"Subject,omitempty"`
}

// Extensions is the passthrough's Extensions structure (certificate
// policies are accepted and ignored).
type Extensions struct {
	CertificatePolicies     json.RawMessage    `json:"CertificatePolicies,omitempty"`
	CustomExtensions        []CustomExtension  `json:"CustomExtensions,omitempty"`
	ExtendedKeyUsage        []ExtendedKeyUsage `json:"ExtendedKeyUsage,omitempty"`
	KeyUsage                *KeyUsage          `json:"KeyUsage,omitempty"`
	SubjectAlternativeNames []GeneralName      `json:"SubjectAlternativeNames,omitempty"`
}

// CustomExtension carries a base64 DER extension value.
type CustomExtension struct {
	ObjectIdentifier string `json:"ObjectIdentifier"`
	Value            string `json:"Value"`
	Critical         bool   `json:"Critical,omitempty"`
}

// ExtendedKeyUsage is one EKU, by type name or OID.
type ExtendedKeyUsage struct {
	ExtendedKeyUsageObjectIdentifier string `json:"ExtendedKeyUsageObjectIdentifier,omitempty"`
	ExtendedKeyUsageType             string `json:"ExtendedKeyUsageType,omitempty"`
}

// KeyUsage is the passthrough's key usage flags.
type KeyUsage struct {
	CRLSign, DataEncipherment, DecipherOnly, DigitalSignature, EncipherOnly bool
	KeyAgreement, KeyCertSign, KeyEncipherment, NonRepudiation              bool
}

// GeneralName is one subject alternative name; the fake supports DNS, URI,
// IP and RFC 822 names.
type GeneralName struct {
	DnsName                   *string         `json:"DnsName,omitempty"`
	UniformResourceIdentifier *string         `json:"UniformResourceIdentifier,omitempty"`
	IpAddress                 *string         `json:"IpAddress,omitempty"`
	Rfc822Name                *string         `json:"Rfc822Name,omitempty"`
	DirectoryName             json.RawMessage `json:"DirectoryName,omitempty"`
	OtherName                 json.RawMessage `json:"OtherName,omitempty"`
	RegisteredId              json.RawMessage `json:"RegisteredId,omitempty"`
	EdiPartyName              json.RawMessage `json:"EdiPartyName,omitempty"`
}

// ASN1Subject is a distinguished name.
type ASN1Subject struct {
	CommonName         string            `json:"CommonName,omitempty"`
	Country            string            `json:"Country,omitempty"`
	Locality           string            `json:"Locality,omitempty"`
	Organization       string            `json:"Organization,omitempty"`
	OrganizationalUnit string            `json:"OrganizationalUnit,omitempty"`
	SerialNumber       string            `json:"SerialNumber,omitempty"`
	State              string            `json:"State,omitempty"`
	CustomAttributes   []CustomAttribute `json:"CustomAttributes,omitempty"`
}

// CustomAttribute is one RDN attribute by OID.
type CustomAttribute struct {
	ObjectIdentifier string `json:"ObjectIdentifier"`
	Value            string `json:"Value"`
}

// Validity is a validity bound.
type Validity struct {
	Type  string `json:"Type"`
	Value int64  `json:"Value"`
}

// apiError is an error answer: HTTP status, __type and message.
type apiError struct {
	status int
	typ    string
	msg    string
}

func (e *apiError) Error() string { return e.typ + ": " + e.msg }

func errf(typ, format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, typ: typ, msg: fmt.Sprintf(format, args...)}
}

func (s *Server) handle(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("x-amzn-RequestId", newUUID())
	s.mu.Lock()
	mode := s.outage
	s.mu.Unlock()
	if mode == Outage503 {
		writeError(w, &apiError{status: http.StatusServiceUnavailable, typ: "ServiceUnavailableException", msg: "Service is currently unavailable."})
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return
	}
	op, ok := strings.CutPrefix(r.Header.Get("X-Amz-Target"), "ACMPrivateCA.")
	if r.Method != http.MethodPost || r.URL.Path != "/" || !ok {
		writeError(w, errf("UnknownOperationException", ""))
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-amz-json-1.1" {
		writeError(w, errf("SerializationException", "Unexpected content type %q", ct))
		return
	}
	s.mu.Lock()
	s.calls[op]++
	s.mu.Unlock()
	throttled := !s.quota.Admit(op)
	if typ, msg := s.checkSigV4(r, body); typ != "" {
		writeError(w, errf(typ, "%s", msg))
		return
	}
	if throttled {
		writeError(w, errf("ThrottlingException", "Rate exceeded"))
		return
	}
	var out any
	var aerr *apiError
	switch op {
	case "DescribeCertificateAuthority":
		out, aerr = s.describe(body)
	case "GetCertificateAuthorityCertificate":
		out, aerr = s.caCertificate(body)
	case "IssueCertificate":
		out, aerr = s.issue(body)
	case "GetCertificate":
		out, aerr = s.getCertificate(body)
	default:
		aerr = errf("UnknownOperationException", "")
	}
	s.mu.Lock()
	drop := s.dropAnswers[op] > 0
	if drop {
		s.dropAnswers[op]--
	}
	s.mu.Unlock()
	if drop {
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				_ = c.Close()
				return
			}
		}
	}
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	b, _ := json.Marshal(out)
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	_, _ = w.Write(b)
}

func writeError(w http.ResponseWriter, e *apiError) {
	b, _ := json.Marshal(map[string]string{"__type": e.typ, "message": e.msg})
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	// The real front end appends the Coral namespace; clients keep only
	// what precedes the colon.
	w.Header().Set("X-Amzn-ErrorType", e.typ+":http://internal.amazon.com/coral/com.amazonaws.acmpca/")
	w.WriteHeader(e.status)
	_, _ = w.Write(b)
}

func decode(body []byte, v any) *apiError {
	if err := json.Unmarshal(body, v); err != nil {
		return errf("SerializationException", "%v", err)
	}
	return nil
}

func (s *Server) checkCA(arn string) *apiError {
	if arn == "" {
		return errf("ValidationException", "1 validation error detected: Value null at 'certificateAuthorityArn' failed to satisfy constraint: Member must not be null")
	}
	if !strings.HasPrefix(arn, "arn:aws:acm-pca:") || !strings.Contains(arn, ":certificate-authority/") {
		return errf("InvalidArnException", "String %s is not a valid ARN.", arn)
	}
	if arn != s.CAArn {
		return errf("ResourceNotFoundException", "Could not find certificate authority %s.", arn)
	}
	return nil
}

func (s *Server) describe(body []byte) (any, *apiError) {
	var in struct{ CertificateAuthorityArn string }
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	if e := s.checkCA(in.CertificateAuthorityArn); e != nil {
		return nil, e
	}
	s.mu.Lock()
	status := s.status
	s.mu.Unlock()
	sub := s.ca.sub
	return map[string]any{"CertificateAuthority": map[string]any{
		"Arn":               s.CAArn,
		"OwnerAccount":      s.opts.Account,
		"CreatedAt":         sub.NotBefore.Unix(),
		"LastStateChangeAt": sub.NotBefore.Unix(),
		"Type":              "SUBORDINATE",
		"Serial":            hex.EncodeToString(sub.SerialNumber.Bytes()),
		"Status":            status,
		"NotBefore":         sub.NotBefore.Unix(),
		"NotAfter":          sub.NotAfter.Unix(),
		"CertificateAuthorityConfiguration": map[string]any{
			"KeyAlgorithm":     s.ca.keyAlgorithm,
			"SigningAlgorithm": defaultSigningAlgorithm(s.ca.keyAlgorithm),
			"Subject": map[string]string{
				"CommonName":   sub.Subject.CommonName,
				"Organization": sub.Subject.Organization[0],
			},
		},
		"KeyStorageSecurityStandard": "FIPS_140_2_LEVEL_3_OR_HIGHER",
		"UsageMode":                  "GENERAL_PURPOSE",
	}}, nil
}

func (s *Server) caCertificate(body []byte) (any, *apiError) {
	var in struct{ CertificateAuthorityArn string }
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	if e := s.checkCA(in.CertificateAuthorityArn); e != nil {
		return nil, e
	}
	return map[string]string{"Certificate": s.ca.subPEM, "CertificateChain": s.ca.rootPEM}, nil
}

func (s *Server) getCertificate(body []byte) (any, *apiError) {
	var in struct{ CertificateArn, CertificateAuthorityArn string }
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	if e := s.checkCA(in.CertificateAuthorityArn); e != nil {
		return nil, e
	}
	if !strings.HasPrefix(in.CertificateArn, in.CertificateAuthorityArn+"/certificate/") {
		return nil, errf("InvalidArnException", "String %s is not a valid ARN.", in.CertificateArn)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.certs[in.CertificateArn]
	if !ok {
		return nil, errf("ResourceNotFoundException", "Could not find certificate %s.", in.CertificateArn)
	}
	if c.pollsLeft > 0 || time.Now().Before(c.readyAt) {
		if c.pollsLeft > 0 {
			c.pollsLeft--
		}
		return nil, errf("RequestInProgressException", "The request to issue certificate %s is still in progress.", in.CertificateArn)
	}
	return map[string]string{
		"Certificate":      c.leafPEM,
		"CertificateChain": s.ca.subPEM + "\n" + s.ca.rootPEM,
	}, nil
}

// templateDef is what a Private CA certificate template fixes and lets
// through.
type templateDef struct {
	api, csr bool // ApiPassthrough / CSR extensions honoured
	blank    bool // usages come from the passthrough sources
	ku       x509.KeyUsage
	eku      []x509.ExtKeyUsage
}

var templates = func() map[string]templateDef {
	m := map[string]templateDef{}
	families := map[string]templateDef{
		"EndEntityCertificate":           {ku: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}},
		"EndEntityClientAuthCertificate": {ku: x509.KeyUsageDigitalSignature, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
		"EndEntityServerAuthCertificate": {ku: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
	}
	for name, d := range families {
		m[name+"/V1"] = d
		for suffix, v := range map[string][2]bool{"_APIPassthrough": {true, false}, "_CSRPassthrough": {false, true}, "_APICSRPassthrough": {true, true}} {
			dd := d
			dd.api, dd.csr = v[0], v[1]
			m[name+suffix+"/V1"] = dd
		}
	}
	m["BlankEndEntityCertificate_CSRPassthrough/V1"] = templateDef{csr: true, blank: true}
	m["BlankEndEntityCertificate_APIPassthrough/V1"] = templateDef{api: true, blank: true}
	m["BlankEndEntityCertificate_APICSRPassthrough/V1"] = templateDef{api: true, csr: true, blank: true}
	return m
}()

var (
	oidSAN              = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
)

func (s *Server) issue(body []byte) (any, *apiError) {
	var in IssueRequest
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	s.mu.Lock()
	s.lastIssue = &in
	status := s.status
	s.mu.Unlock()
	if e := s.checkCA(in.CertificateAuthorityArn); e != nil {
		return nil, e
	}
	if in.Csr == nil {
		return nil, errf("ValidationException", "1 validation error detected: Value null at 'csr' failed to satisfy constraint: Member must not be null")
	}
	if in.SigningAlgorithm == "" {
		return nil, errf("ValidationException", "1 validation error detected: Value null at 'signingAlgorithm' failed to satisfy constraint: Member must not be null")
	}
	if in.Validity == nil {
		return nil, errf("ValidationException", "1 validation error detected: Value null at 'validity' failed to satisfy constraint: Member must not be null")
	}
	if len(in.IdempotencyToken) > 36 {
		return nil, errf("ValidationException", "1 validation error detected: Value at 'idempotencyToken' failed to satisfy constraint: Member must have length less than or equal to 36")
	}
	if status != "ACTIVE" {
		return nil, errf("InvalidStateException", "The certificate authority %s is not in the correct state to issue certificates: %s.", s.CAArn, status)
	}

	now := time.Now()
	tokenKey := in.CertificateAuthorityArn + "\x00" + in.IdempotencyToken
	if in.IdempotencyToken != "" {
		s.mu.Lock()
		t, ok := s.tokens[tokenKey]
		s.mu.Unlock()
		if ok && now.Before(t.expires) {
			return map[string]string{"CertificateArn": t.arn}, nil
		}
	}

	tmplName := "EndEntityCertificate/V1"
	if in.TemplateArn != "" {
		name, ok := strings.CutPrefix(in.TemplateArn, "arn:aws:acm-pca:::template/")
		if !ok {
			return nil, errf("InvalidArnException", "String %s is not a valid ARN.", in.TemplateArn)
		}
		tmplName = name
	}
	def, ok := templates[tmplName]
	if !ok {
		return nil, errf("InvalidArgsException", "The template %s is not supported by this fake or does not exist.", in.TemplateArn)
	}

	block, _ := pem.Decode(in.Csr)
	if block == nil || block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
		return nil, errf("MalformedCSRException", "The certificate signing request is not PEM encoded.")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, errf("MalformedCSRException", "The certificate signing request is invalid: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, errf("MalformedCSRException", "The certificate signing request signature is invalid.")
	}
	rdns, err := rdnCount(csr.RawSubject)
	if err != nil {
		return nil, errf("MalformedCSRException", "The certificate signing request subject is invalid: %v", err)
	}
	var sanExt *pkix.Extension
	for i := range csr.Extensions {
		if csr.Extensions[i].Id.Equal(oidSAN) {
			sanExt = &csr.Extensions[i]
		}
	}
	if rdns == 0 && sanExt == nil {
		return nil, errf("MalformedCSRException", "CSR must provide either a subject name or a subject alternative name.")
	}
	var pt APIPassthrough
	if def.api && in.ApiPassthrough != nil {
		pt = *in.ApiPassthrough
	}
	if pt.Extensions == nil {
		pt.Extensions = &Extensions{}
	}
	namesFromAPI := len(pt.Extensions.SubjectAlternativeNames) > 0
	if rdns == 0 && sanExt != nil && !sanExt.Critical && (s.opts.StrictEmptySubject || !namesFromAPI) {
		return nil, errf("MalformedCSRException", "CSR must mark the SAN extension critical when it has an empty subject.")
	}

	alg, ok := signatureAlgorithms[in.SigningAlgorithm]
	if !ok {
		return nil, errf("ValidationException", "1 validation error detected: Value '%s' at 'signingAlgorithm' failed to satisfy constraint: Member must satisfy enum value set", in.SigningAlgorithm)
	}
	if !strings.HasPrefix(s.ca.keyAlgorithm, alg.family) {
		return nil, errf("InvalidArgsException", "The signing algorithm %s is not compatible with the certificate authority's key algorithm %s.", in.SigningAlgorithm, s.ca.keyAlgorithm)
	}
	notAfter, e := validityTime(in.Validity, now, "validity")
	if e != nil {
		return nil, e
	}
	notBefore := now.Add(-time.Hour) // the service backdates an hour by default
	if in.ValidityNotBefore != nil {
		if in.ValidityNotBefore.Type != "ABSOLUTE" {
			return nil, errf("InvalidArgsException", "ValidityNotBefore must use the ABSOLUTE type.")
		}
		notBefore = time.Unix(in.ValidityNotBefore.Value, 0)
	}
	if !notAfter.After(now) || !notAfter.After(notBefore) {
		return nil, errf("InvalidArgsException", "The certificate validity end %s must be in the future and after its start.", notAfter.UTC().Format(time.RFC3339))
	}
	if notAfter.After(s.ca.sub.NotAfter) {
		return nil, errf("InvalidArgsException", "The certificate validity end %s exceeds the certificate authority's validity %s.",
			notAfter.UTC().Format(time.RFC3339), s.ca.sub.NotAfter.UTC().Format(time.RFC3339))
	}

	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		SignatureAlgorithm:    alg.alg,
		SubjectKeyId:          keyID(csr.PublicKey),
	}
	if pt.Subject != nil {
		name, e := subjectName(pt.Subject)
		if e != nil {
			return nil, e
		}
		tmpl.Subject = name
	} else {
		// "From API or CSR": the CSR's subject exactly as it was encoded.
		tmpl.RawSubject = csr.RawSubject
	}
	s.mu.Lock()
	inject := s.injectSubject
	latency := s.issueLatency
	s.mu.Unlock()
	if inject != nil {
		tmpl.Subject, tmpl.RawSubject = pkix.Name{}, inject
	}
	if namesFromAPI {
		if e := applyGeneralNames(tmpl, pt.Extensions.SubjectAlternativeNames); e != nil {
			return nil, e
		}
	} else {
		// Every template copies the CSR's names when the API gives none.
		tmpl.DNSNames, tmpl.URIs, tmpl.IPAddresses, tmpl.EmailAddresses = csr.DNSNames, csr.URIs, csr.IPAddresses, csr.EmailAddresses
	}
	switch {
	case !def.blank:
		tmpl.KeyUsage, tmpl.ExtKeyUsage = def.ku, def.eku
	case def.api && (pt.Extensions.KeyUsage != nil || len(pt.Extensions.ExtendedKeyUsage) > 0):
		tmpl.KeyUsage = keyUsage(pt.Extensions.KeyUsage)
		eku, e := extKeyUsages(pt.Extensions.ExtendedKeyUsage)
		if e != nil {
			return nil, e
		}
		tmpl.ExtKeyUsage = eku
	case def.csr:
		for _, ext := range csr.Extensions {
			if !ext.Id.Equal(oidSAN) && !ext.Id.Equal(oidBasicConstraints) {
				tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, ext)
			}
		}
	}
	if def.api {
		for _, ce := range pt.Extensions.CustomExtensions {
			ext, e := customExtension(ce)
			if e != nil {
				return nil, e
			}
			tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, ext)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.ca.sub, csr.PublicKey, s.ca.subKey)
	if err != nil {
		return nil, errf("InvalidArgsException", "The certificate could not be issued: %v", err)
	}
	arn := s.CAArn + "/certificate/" + hex.EncodeToString(tmpl.SerialNumber.Bytes())
	s.mu.Lock()
	defer s.mu.Unlock()
	if in.IdempotencyToken != "" {
		// Two concurrent calls with one token: the first to get here wins.
		if t, ok := s.tokens[tokenKey]; ok && now.Before(t.expires) {
			return map[string]string{"CertificateArn": t.arn}, nil
		}
	}
	if s.hardQuota > 0 && s.issuedCount >= s.hardQuota {
		return nil, errf("LimitExceededException", "The certificate authority %s has reached its quota of %d issued certificates.", s.CAArn, s.hardQuota)
	}
	if in.IdempotencyToken != "" {
		s.tokens[tokenKey] = tokenEntry{arn: arn, expires: now.Add(5 * time.Minute)}
	}
	s.certs[arn] = &issued{leafPEM: pemString(der), pollsLeft: s.inProgress, readyAt: now.Add(latency)}
	s.issuedCount++
	return map[string]string{"CertificateArn": arn}, nil
}

// rdnCount is the number of RDNs in a DER Name, read without interpreting
// the attributes (so no attribute type or string type is lost or refused).
func rdnCount(raw []byte) (int, error) {
	if len(raw) == 0 {
		return 0, nil
	}
	var seq asn1.RawValue
	rest, err := asn1.Unmarshal(raw, &seq)
	if err != nil {
		return 0, err
	}
	if len(rest) != 0 || seq.Class != asn1.ClassUniversal || seq.Tag != asn1.TagSequence || !seq.IsCompound {
		return 0, errors.New("not a SEQUENCE of RDNs")
	}
	n := 0
	for b := seq.Bytes; len(b) > 0; n++ {
		var rdn asn1.RawValue
		if b, err = asn1.Unmarshal(b, &rdn); err != nil {
			return 0, err
		}
		if rdn.Class != asn1.ClassUniversal || rdn.Tag != asn1.TagSet || !rdn.IsCompound || len(rdn.Bytes) == 0 {
			return 0, fmt.Errorf("RDN %d is not a non-empty SET", n)
		}
	}
	return n, nil
}

func validityTime(v *Validity, now time.Time, field string) (time.Time, *apiError) {
	if v.Value < 1 {
		return time.Time{}, errf("ValidationException", "1 validation error detected: Value '%d' at '%s.value' failed to satisfy constraint: Member must have value greater than or equal to 1", v.Value, field)
	}
	switch v.Type {
	case "ABSOLUTE":
		return time.Unix(v.Value, 0), nil
	case "END_DATE":
		s := strconv.FormatInt(v.Value, 10)
		layout := "20060102150405"
		if len(s) == 12 {
			layout = "060102150405"
		}
		t, err := time.Parse(layout, s)
		if err != nil || len(s) != 12 && len(s) != 14 {
			return time.Time{}, errf("InvalidArgsException", "The END_DATE validity %d is not in YYMMDDHHMMSS or YYYYMMDDHHMMSS form.", v.Value)
		}
		return t, nil
	case "DAYS":
		return now.AddDate(0, 0, int(v.Value)), nil
	case "MONTHS":
		return now.AddDate(0, int(v.Value), 0), nil
	case "YEARS":
		return now.AddDate(int(v.Value), 0, 0), nil
	}
	return time.Time{}, errf("ValidationException", "1 validation error detected: Value '%s' at '%s.type' failed to satisfy constraint: Member must satisfy enum value set: [END_DATE, ABSOLUTE, DAYS, MONTHS, YEARS]", v.Type, field)
}

func subjectName(s *ASN1Subject) (pkix.Name, *apiError) {
	var n pkix.Name
	if len(s.CustomAttributes) > 0 {
		if s.CommonName != "" || s.Country != "" || s.Locality != "" || s.Organization != "" ||
			s.OrganizationalUnit != "" || s.SerialNumber != "" || s.State != "" {
			return n, errf("InvalidArgsException", "CustomAttributes cannot be combined with other subject fields.")
		}
		for _, a := range s.CustomAttributes {
			oid, err := parseOID(a.ObjectIdentifier)
			if err != nil {
				return n, errf("InvalidArgsException", "Invalid object identifier %q.", a.ObjectIdentifier)
			}
			n.ExtraNames = append(n.ExtraNames, pkix.AttributeTypeAndValue{Type: oid, Value: a.Value})
		}
		return n, nil
	}
	add := func(dst *[]string, v string) {
		if v != "" {
			*dst = append(*dst, v)
		}
	}
	n.CommonName, n.SerialNumber = s.CommonName, s.SerialNumber
	add(&n.Country, s.Country)
	add(&n.Locality, s.Locality)
	add(&n.Organization, s.Organization)
	add(&n.OrganizationalUnit, s.OrganizationalUnit)
	add(&n.Province, s.State)
	return n, nil
}

func applyGeneralNames(t *x509.Certificate, names []GeneralName) *apiError {
	for _, g := range names {
		switch {
		case g.DnsName != nil:
			t.DNSNames = append(t.DNSNames, *g.DnsName)
		case g.UniformResourceIdentifier != nil:
			u, err := url.Parse(*g.UniformResourceIdentifier)
			if err != nil {
				return errf("InvalidArgsException", "Invalid URI %q in SubjectAlternativeNames.", *g.UniformResourceIdentifier)
			}
			t.URIs = append(t.URIs, u)
		case g.IpAddress != nil:
			ip := net.ParseIP(*g.IpAddress)
			if ip == nil {
				return errf("InvalidArgsException", "Invalid IP address %q in SubjectAlternativeNames.", *g.IpAddress)
			}
			t.IPAddresses = append(t.IPAddresses, ip)
		case g.Rfc822Name != nil:
			t.EmailAddresses = append(t.EmailAddresses, *g.Rfc822Name)
		default:
			return errf("InvalidArgsException", "This fake supports only DnsName, UniformResourceIdentifier, IpAddress and Rfc822Name names.")
		}
	}
	return nil
}

func keyUsage(k *KeyUsage) x509.KeyUsage {
	if k == nil {
		return 0
	}
	var u x509.KeyUsage
	for flag, bit := range map[*bool]x509.KeyUsage{
		&k.DigitalSignature: x509.KeyUsageDigitalSignature, &k.NonRepudiation: x509.KeyUsageContentCommitment,
		&k.KeyEncipherment: x509.KeyUsageKeyEncipherment, &k.DataEncipherment: x509.KeyUsageDataEncipherment,
		&k.KeyAgreement: x509.KeyUsageKeyAgreement, &k.KeyCertSign: x509.KeyUsageCertSign,
		&k.CRLSign: x509.KeyUsageCRLSign, &k.EncipherOnly: x509.KeyUsageEncipherOnly, &k.DecipherOnly: x509.KeyUsageDecipherOnly,
	} {
		if *flag {
			u |= bit
		}
	}
	return u
}

var ekuTypes = map[string]x509.ExtKeyUsage{
	"SERVER_AUTH": x509.ExtKeyUsageServerAuth, "CLIENT_AUTH": x509.ExtKeyUsageClientAuth,
	"CODE_SIGNING": x509.ExtKeyUsageCodeSigning, "EMAIL_PROTECTION": x509.ExtKeyUsageEmailProtection,
	"TIME_STAMPING": x509.ExtKeyUsageTimeStamping, "OCSP_SIGNING": x509.ExtKeyUsageOCSPSigning,
}

func extKeyUsages(in []ExtendedKeyUsage) ([]x509.ExtKeyUsage, *apiError) {
	var out []x509.ExtKeyUsage
	for _, e := range in {
		u, ok := ekuTypes[e.ExtendedKeyUsageType]
		if !ok {
			return nil, errf("InvalidArgsException", "This fake does not support extended key usage %q.", e.ExtendedKeyUsageType+e.ExtendedKeyUsageObjectIdentifier)
		}
		out = append(out, u)
	}
	return out, nil
}

func customExtension(ce CustomExtension) (pkix.Extension, *apiError) {
	oid, err := parseOID(ce.ObjectIdentifier)
	if err != nil {
		return pkix.Extension{}, errf("InvalidArgsException", "Invalid object identifier %q.", ce.ObjectIdentifier)
	}
	v, err := base64.StdEncoding.DecodeString(ce.Value)
	if err != nil {
		return pkix.Extension{}, errf("InvalidArgsException", "Custom extension value must be base64.")
	}
	return pkix.Extension{Id: oid, Critical: ce.Critical, Value: v}, nil
}

func parseOID(s string) (asn1.ObjectIdentifier, error) {
	var oid asn1.ObjectIdentifier
	for _, p := range strings.Split(s, ".") {
		n, err := strconv.Atoi(p)
		if err != nil {
			return nil, err
		}
		oid = append(oid, n)
	}
	if len(oid) < 2 {
		return nil, errors.New("short OID")
	}
	return oid, nil
}

func newUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
