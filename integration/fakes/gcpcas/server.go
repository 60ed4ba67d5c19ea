// Package gcpcas is a fake Google Cloud Certificate Authority Service for
// tests: a real gRPC server on 127.0.0.1 implementing the generated
// privatecapb CertificateAuthorityServiceServer, so the unmodified
// cloud.google.com/go/security/privateca/apiv1 client can be pointed at it
// (option.WithEndpoint, option.WithoutAuthentication and an insecure
// transport), with a real in-memory CA hierarchy per CA of the pool.
//
// What it reproduces, from service.proto, resources.proto and the API
// documentation:
//   - CreateCertificate into projects/P/locations/L/caPools/POOL, from a
//     pem_csr or from a config. From a pem_csr it copies what CA Service
//     copies for a pool whose identity constraints allow subject and SAN
//     passthrough and whose passthrough_extensions are unrestricted: the
//     CSR's subject as raw DER (every RDN and attribute, emailAddress, DC,
//     UID, multi-valued RDNs and string encodings included), its
//     subjectAltName extension as raw DER (every GeneralName, otherName,
//     directoryName and registeredID included; critical when the subject is
//     empty), and every other requested extension except those the pool
//     sets itself (key usage, extended key usage, basic constraints and key
//     identifiers, which come from the pool's baseline: digital signature,
//     key encipherment, TLS server and client, not a CA). From a config it
//     takes the public key, subject (named fields or rdn_sequence), SANs and
//     X.509 key usages of the request. A certificate with neither subject nor
//     SAN is refused. The issuing CA is chosen by
//     issuing_certificate_authority_id or is the first ENABLED CA; lifetime
//     required, truncated to the pool's maximum_lifetime and to the issuing
//     CA's expiry; certificate_template must exist; request_id must be a
//     non-zero UUID and replays the first answer for 60 minutes;
//     certificate_id is required in the ENTERPRISE tier, must match
//     [a-zA-Z0-9_-]{1,63} and be unique (ALREADY_EXISTS); validate_only
//     issues nothing and returns no pem_certificate;
//   - the answer's pem_certificate and pem_certificate_chain (issuer to
//     root, the root included: the issuing CA's certificate then its root),
//     name, issuer_certificate_authority, lifetime, certificate_description;
//   - FetchCaCerts (one chain per CA of the pool, from the CA's own
//     certificate to its root) and GetCaPool;
//   - faults: RESOURCE_EXHAUSTED quota errors for the next K calls
//     (Throttle) or beyond a per-method rate (SetRateLimit: a token bucket
//     per method, as CA Service's per-minute request quotas answer), added
//     latency (SetLatency, for DEADLINE_EXCEEDED), CA state (SetCAState: a
//     non-ENABLED CA refuses with FAILED_PRECONDITION), lost answers
//     (DropAnswers: the work is done, the connection closed), an outage
//     switch that drops every connection or answers UNAVAILABLE
//     (SetOutage), and a misbehaving PKI that puts a subject of its own into
//     every certificate it issues (SetInjectSubject).
//
// Calls and IssuedCount are exact under concurrent calls: every call is
// counted when it arrives (refused, throttled and rate-limited ones
// included), and concurrent calls with one request_id issue once.
//
// What it does not reproduce: authentication and IAM (no credentials are
// checked: tests dial it without authentication, over plaintext), the
// pool's identity constraints and CEL expressions (subject and SAN
// passthrough are always allowed), passthrough_extensions restrictions,
// certificate templates' predefined values, subject_mode (RDN_SEQUENCE,
// REFLECTED_SPIFFE), CRLs, long-running operations and every method not
// listed above (UNIMPLEMENTED), error details (google.rpc.ErrorInfo /
// QuotaFailure), exact error wording, the real service's quotas and
// latencies, and how it re-encodes a copied subject (it may normalise
// string types or attribute order; the fake copies the bytes). Issuance is
// synchronous, as CreateCertificate is in the real API: there is nothing to
// poll.
package gcpcas

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/security/privateca/apiv1/privatecapb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meshca/broker/integration/fakes/netfault"
	"github.com/meshca/broker/integration/fakes/quota"
)

// Options configure a fake. Zero values pick the defaults.
type Options struct {
	Project  string // default "fake-project"
	Location string // default "us-central1"
	Pool     string // default "mesh-pool"
	// CAs are the pool's CA IDs (default ["ca-1"]), each with its own root.
	CAs []string
	// KeyAlgorithm of the CAs: EC_P256_SHA256 (default), EC_P384_SHA384,
	// RSA_PKCS1_2048_SHA256 or RSA_PSS_2048_SHA256.
	KeyAlgorithm string
	// Tier of the pool: ENTERPRISE (default) or DEVOPS.
	Tier string
	// MaximumLifetime of the pool's issuance policy (0: none).
	MaximumLifetime time.Duration
	// CertificateTemplates are the IDs of templates that exist in the
	// fake's location.
	CertificateTemplates []string
	// CAValidity is each subordinate CA's remaining lifetime (default 30 days).
	CAValidity time.Duration
}

// OutageMode says how the fake fails while it is "down".
type OutageMode int

const (
	// NoOutage serves normally.
	NoOutage OutageMode = iota
	// OutageDrop closes every open connection and every new one.
	OutageDrop
	// OutageUnavailable answers every call with UNAVAILABLE.
	OutageUnavailable
)

// Server is a running fake.
type Server struct {
	// Addr is host:port to give option.WithEndpoint.
	Addr string
	// PoolName is projects/P/locations/L/caPools/POOL.
	PoolName string

	privatecapb.UnimplementedCertificateAuthorityServiceServer
	opts Options
	cas  map[string]*fakeCA
	ids  []string
	grpc *grpc.Server
	ln   *netfault.Listener

	mu            sync.Mutex
	outage        OutageMode
	latency       time.Duration
	dropAnswers   map[string]int
	calls         map[string]int
	issued        int
	requests      map[string]requestEntry
	certIDs       map[string]string // certificate_id -> request_id
	lastCreate    *privatecapb.CreateCertificateRequest
	lastParamsHdr string
	injectSubject []byte

	quota quota.Quota
}

type fakeCA struct {
	*hierarchy
	state privatecapb.CertificateAuthority_State
}

type requestEntry struct {
	cert    *privatecapb.Certificate
	expires time.Time
}

// Start creates the pool's CAs and serves on 127.0.0.1 (a free port).
func Start(opts Options) (*Server, error) {
	if opts.Project == "" {
		opts.Project = "fake-project"
	}
	if opts.Location == "" {
		opts.Location = "us-central1"
	}
	if opts.Pool == "" {
		opts.Pool = "mesh-pool"
	}
	if len(opts.CAs) == 0 {
		opts.CAs = []string{"ca-1"}
	}
	if opts.KeyAlgorithm == "" {
		opts.KeyAlgorithm = "EC_P256_SHA256"
	}
	if opts.Tier == "" {
		opts.Tier = "ENTERPRISE"
	}
	if opts.CAValidity <= 0 {
		opts.CAValidity = 30 * 24 * time.Hour
	}
	s := &Server{
		PoolName:    fmt.Sprintf("projects/%s/locations/%s/caPools/%s", opts.Project, opts.Location, opts.Pool),
		opts:        opts,
		cas:         map[string]*fakeCA{},
		ids:         opts.CAs,
		dropAnswers: map[string]int{},
		calls:       map[string]int{},
		requests:    map[string]requestEntry{},
		certIDs:     map[string]string{},
	}
	for _, id := range opts.CAs {
		h, err := newHierarchy(opts.KeyAlgorithm, id, opts.CAValidity)
		if err != nil {
			return nil, err
		}
		s.cas[id] = &fakeCA{hierarchy: h, state: privatecapb.CertificateAuthority_ENABLED}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("fake gcpcas: listening: %w", err)
	}
	s.Addr = l.Addr().String()
	s.ln = netfault.New(l)
	s.grpc = grpc.NewServer(grpc.UnaryInterceptor(s.intercept))
	privatecapb.RegisterCertificateAuthorityServiceServer(s.grpc, s)
	go func() { _ = s.grpc.Serve(s.ln) }()
	return s, nil
}

// Close stops the server.
func (s *Server) Close() {
	s.ln.SetDropping(true)
	s.grpc.Stop()
}

// Root returns the root of the pool's CA with this ID.
func (s *Server) Root(caID string) *x509.Certificate { return s.cas[caID].root }

// Subordinate returns the certificate of the pool's CA with this ID.
func (s *Server) Subordinate(caID string) *x509.Certificate { return s.cas[caID].sub }

// Throttle answers the next n calls of the named methods (every method when
// none is named) with RESOURCE_EXHAUSTED.
func (s *Server) Throttle(n int, methods ...string) { s.quota.Throttle(n, methods...) }

// SetLatency delays every answer by d (or until the caller's deadline).
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// DropAnswers makes the next n calls of a method do their work and then
// close the connection instead of answering.
func (s *Server) DropAnswers(method string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropAnswers[method] = n
}

// SetCAState sets a CA's state; only ENABLED CAs issue.
func (s *Server) SetCAState(caID string, st privatecapb.CertificateAuthority_State) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cas[caID].state = st
}

// SetOutage switches the outage on (OutageDrop, OutageUnavailable) or off.
func (s *Server) SetOutage(m OutageMode) {
	s.mu.Lock()
	s.outage = m
	s.mu.Unlock()
	s.ln.SetDropping(m == OutageDrop)
}

// SetInjectSubject makes every certificate issued from now on carry raw
// (a DER Name) as its subject, whatever the request said: a misbehaving or
// misconfigured PKI. nil turns it off.
func (s *Server) SetInjectSubject(raw []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.injectSubject = bytes.Clone(raw)
}

// SetRateLimit admits perSecond calls per second to each method, with
// bursts of up to burst (at least 1), and answers the calls beyond it with
// RESOURCE_EXHAUSTED, as CA Service does when a request quota is exceeded.
// Each method has its own bucket, starting full. perSecond <= 0 turns the
// limit off.
func (s *Server) SetRateLimit(perSecond float64, burst int) { s.quota.SetRate(perSecond, burst) }

// Calls reports how many calls a method received, failed ones included.
func (s *Server) Calls(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[method]
}

// IssuedCount reports how many certificates were signed (replays of a
// request_id do not count).
func (s *Server) IssuedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issued
}

// LastCreateRequest returns the last CreateCertificate request received.
func (s *Server) LastCreateRequest() *privatecapb.CreateCertificateRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastCreate
}

// LastRequestParams returns the x-goog-request-params metadata of the
// last call: the routing header Google's clients send with the resource
// name.
func (s *Server) LastRequestParams() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastParamsHdr
}

func (s *Server) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	method := info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:]
	md, _ := metadata.FromIncomingContext(ctx)
	s.mu.Lock()
	s.calls[method]++
	if v := md.Get("x-goog-request-params"); len(v) > 0 {
		s.lastParamsHdr = v[0]
	}
	outage, latency := s.outage, s.latency
	s.mu.Unlock()
	// An unavailable service spends no quota.
	refused := outage != OutageUnavailable && !s.quota.Admit(method)
	if outage == OutageUnavailable {
		return nil, status.Error(codes.Unavailable, "The service is currently unavailable.")
	}
	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, status.FromContextError(ctx.Err()).Err()
		case <-t.C:
		}
	}
	if refused {
		metric := "Read requests"
		if method == "CreateCertificate" {
			metric = "Certificate creation requests"
		}
		return nil, status.Errorf(codes.ResourceExhausted,
			"Quota exceeded for quota metric '%s' and limit '%s per minute per region' of service 'privateca.googleapis.com' for consumer 'project:%s'.", metric, metric, s.opts.Project)
	}
	resp, err := handler(ctx, req)
	s.mu.Lock()
	drop := s.dropAnswers[method] > 0
	if drop {
		s.dropAnswers[method]--
	}
	s.mu.Unlock()
	if drop {
		s.ln.CloseAll()
		return nil, status.Error(codes.Unavailable, "connection dropped by the fake")
	}
	return resp, err
}

var (
	certIDPattern = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,63}$`)
	uuidPattern   = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
)

// CreateCertificate issues a certificate from the pool.
func (s *Server) CreateCertificate(ctx context.Context, req *privatecapb.CreateCertificateRequest) (*privatecapb.Certificate, error) {
	s.mu.Lock()
	s.lastCreate = proto.Clone(req).(*privatecapb.CreateCertificateRequest)
	s.mu.Unlock()
	if req.GetParent() != s.PoolName {
		return nil, status.Errorf(codes.NotFound, "Resource '%s' was not found", req.GetParent())
	}
	if req.GetCertificate() == nil {
		return nil, status.Error(codes.InvalidArgument, "certificate is required")
	}
	now := time.Now()
	if id := req.GetRequestId(); id != "" {
		if !uuidPattern.MatchString(id) || id == "00000000-0000-0000-0000-000000000000" {
			return nil, status.Errorf(codes.InvalidArgument, "request_id %q is not a valid non-zero UUID", id)
		}
		s.mu.Lock()
		e, ok := s.requests[id]
		s.mu.Unlock()
		if ok && now.Before(e.expires) {
			return proto.Clone(e.cert).(*privatecapb.Certificate), nil
		}
	}
	certID := req.GetCertificateId()
	if certID == "" && s.opts.Tier == "ENTERPRISE" {
		return nil, status.Error(codes.InvalidArgument, "certificate_id is required when the CA pool is in the Enterprise tier")
	}
	if certID != "" && !certIDPattern.MatchString(certID) {
		return nil, status.Errorf(codes.InvalidArgument, "certificate_id %q must match [a-zA-Z0-9_-]{1,63}", certID)
	}
	if certID == "" {
		certID = now.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(randomSerial().Bytes()[:4])
	}
	name := s.PoolName + "/certificates/" + certID
	s.mu.Lock()
	_, exists := s.certIDs[certID]
	s.mu.Unlock()
	if exists {
		return nil, status.Errorf(codes.AlreadyExists, "Resource '%s' already exists", name)
	}

	caID, ca, err := s.issuingCA(req.GetIssuingCertificateAuthorityId())
	if err != nil {
		return nil, err
	}
	c := req.GetCertificate()
	if c.GetLifetime() == nil || c.GetLifetime().AsDuration() <= 0 {
		return nil, status.Error(codes.InvalidArgument, "certificate.lifetime must be set to a positive duration")
	}
	if t := c.GetCertificateTemplate(); t != "" {
		prefix := fmt.Sprintf("projects/%s/locations/%s/certificateTemplates/", s.opts.Project, s.opts.Location)
		id, ok := strings.CutPrefix(t, prefix)
		if !ok || !contains(s.opts.CertificateTemplates, id) {
			return nil, status.Errorf(codes.NotFound, "Resource '%s' was not found", t)
		}
	}

	tmpl, pub, err := s.certificateTemplate(c)
	if err != nil {
		return nil, err
	}
	lifetime := c.GetLifetime().AsDuration()
	if m := s.opts.MaximumLifetime; m > 0 && lifetime > m {
		lifetime = m
	}
	notBefore := now
	notAfter := notBefore.Add(lifetime)
	if notAfter.After(ca.sub.NotAfter) {
		notAfter = ca.sub.NotAfter
	}
	s.mu.Lock()
	if s.injectSubject != nil {
		tmpl.RawSubject = bytes.Clone(s.injectSubject)
	}
	s.mu.Unlock()
	for i, e := range tmpl.ExtraExtensions {
		if e.Id.Equal(oidSubjectAltName) {
			// Critical exactly when the subject is empty (RFC 5280 4.2.1.6).
			tmpl.ExtraExtensions[i].Critical = isEmptyName(tmpl.RawSubject)
		}
	}
	tmpl.SerialNumber = randomSerial()
	tmpl.NotBefore, tmpl.NotAfter = notBefore, notAfter
	tmpl.SignatureAlgorithm = signatureAlgorithm(s.opts.KeyAlgorithm)
	tmpl.SubjectKeyId = keyID(pub)
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.sub, pub, ca.subKey)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "could not issue the certificate: %v", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "the fake issued a certificate it cannot parse: %v", err)
	}
	out := &privatecapb.Certificate{
		Name:                       name,
		IssuerCertificateAuthority: s.PoolName + "/certificateAuthorities/" + caID,
		Lifetime:                   durationpb.New(notAfter.Sub(notBefore).Truncate(time.Second)),
		CertificateTemplate:        c.GetCertificateTemplate(),
		SubjectMode:                c.GetSubjectMode(),
		PemCertificate:             pemString(der),
		PemCertificateChain:        []string{ca.subPEM, ca.rootPEM},
		CreateTime:                 timestamppb.New(now),
		UpdateTime:                 timestamppb.New(now),
		Labels:                     c.GetLabels(),
		CertificateDescription: &privatecapb.CertificateDescription{
			SubjectDescription: &privatecapb.CertificateDescription_SubjectDescription{
				HexSerialNumber: hex.EncodeToString(leaf.SerialNumber.Bytes()),
				Lifetime:        durationpb.New(leaf.NotAfter.Sub(leaf.NotBefore)),
				NotBeforeTime:   timestamppb.New(leaf.NotBefore),
				NotAfterTime:    timestamppb.New(leaf.NotAfter),
			},
		},
	}
	if c.GetPemCsr() != "" {
		out.CertificateConfig = &privatecapb.Certificate_PemCsr{PemCsr: c.GetPemCsr()}
	} else {
		out.CertificateConfig = &privatecapb.Certificate_Config{Config: c.GetConfig()}
	}
	if req.GetValidateOnly() {
		out.PemCertificate, out.PemCertificateChain = "", nil
		return out, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if id := req.GetRequestId(); id != "" {
		if e, ok := s.requests[id]; ok && now.Before(e.expires) {
			return proto.Clone(e.cert).(*privatecapb.Certificate), nil
		}
		s.requests[id] = requestEntry{cert: proto.Clone(out).(*privatecapb.Certificate), expires: now.Add(60 * time.Minute)}
	}
	if _, exists := s.certIDs[certID]; exists {
		return nil, status.Errorf(codes.AlreadyExists, "Resource '%s' already exists", name)
	}
	s.certIDs[certID] = req.GetRequestId()
	s.issued++
	return out, nil
}

func (s *Server) issuingCA(id string) (string, *fakeCA, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id != "" {
		ca, ok := s.cas[id]
		if !ok {
			return "", nil, status.Errorf(codes.NotFound, "Resource '%s/certificateAuthorities/%s' was not found", s.PoolName, id)
		}
		if ca.state != privatecapb.CertificateAuthority_ENABLED {
			return "", nil, status.Errorf(codes.FailedPrecondition, "CA '%s/certificateAuthorities/%s' is in state %s and cannot issue certificates", s.PoolName, id, ca.state)
		}
		return id, ca, nil
	}
	for _, id := range s.ids {
		if ca := s.cas[id]; ca.state == privatecapb.CertificateAuthority_ENABLED {
			return id, ca, nil
		}
	}
	return "", nil, status.Errorf(codes.FailedPrecondition, "There are no enabled CAs in the CA Pool '%s'", s.PoolName)
}

// certificateTemplate turns the request's pem_csr or config into what the
// certificate will say, and the public key it certifies.
func (s *Server) certificateTemplate(c *privatecapb.Certificate) (*x509.Certificate, any, error) {
	baseline := &x509.Certificate{
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	switch {
	case c.GetPemCsr() != "":
		block, _ := pem.Decode([]byte(c.GetPemCsr()))
		if block == nil || !strings.HasSuffix(block.Type, "CERTIFICATE REQUEST") {
			return nil, nil, status.Error(codes.InvalidArgument, "Failed to parse the PEM-encoded CSR")
		}
		csr, err := x509.ParseCertificateRequest(block.Bytes)
		if err != nil {
			return nil, nil, status.Errorf(codes.InvalidArgument, "Failed to parse the CSR: %v", err)
		}
		if err := csr.CheckSignature(); err != nil {
			return nil, nil, status.Error(codes.InvalidArgument, "The CSR signature is invalid")
		}
		baseline.RawSubject = bytes.Clone(csr.RawSubject)
		if len(baseline.RawSubject) == 0 {
			baseline.RawSubject = emptyName
		}
		hasSAN := false
		for _, e := range csr.Extensions {
			switch {
			case e.Id.Equal(oidSubjectAltName):
				// Copied as it is, every GeneralName; criticality is set
				// once the final subject is known.
				hasSAN = true
				baseline.ExtraExtensions = append(baseline.ExtraExtensions, pkix.Extension{Id: e.Id, Value: bytes.Clone(e.Value)})
			case poolSetsExtension(e.Id):
			default:
				baseline.ExtraExtensions = append(baseline.ExtraExtensions, pkix.Extension{Id: e.Id, Critical: e.Critical, Value: bytes.Clone(e.Value)})
			}
		}
		if isEmptyName(baseline.RawSubject) && !hasSAN {
			return nil, nil, status.Error(codes.InvalidArgument, "The certificate must have a subject or a subject alternative name")
		}
		return baseline, csr.PublicKey, nil
	case c.GetConfig() != nil:
		cfg := c.GetConfig()
		pk := cfg.GetPublicKey()
		if pk == nil || len(pk.GetKey()) == 0 {
			return nil, nil, status.Error(codes.InvalidArgument, "config.public_key is required")
		}
		if f := pk.GetFormat(); f != privatecapb.PublicKey_PEM && f != privatecapb.PublicKey_KEY_FORMAT_UNSPECIFIED {
			return nil, nil, status.Errorf(codes.InvalidArgument, "public key format %s is not supported", f)
		}
		block, _ := pem.Decode(pk.GetKey())
		if block == nil {
			return nil, nil, status.Error(codes.InvalidArgument, "config.public_key.key is not PEM")
		}
		pub, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, nil, status.Errorf(codes.InvalidArgument, "config.public_key.key: %v", err)
		}
		t := &x509.Certificate{}
		sc := cfg.GetSubjectConfig()
		if subj := sc.GetSubject(); subj != nil {
			if t.RawSubject, err = subjectName(subj); err != nil {
				return nil, nil, err
			}
		}
		san := sc.GetSubjectAltName()
		t.DNSNames, t.EmailAddresses = san.GetDnsNames(), san.GetEmailAddresses()
		for _, u := range san.GetUris() {
			pu, err := url.Parse(u)
			if err != nil {
				return nil, nil, status.Errorf(codes.InvalidArgument, "invalid URI SAN %q", u)
			}
			t.URIs = append(t.URIs, pu)
		}
		for _, ip := range san.GetIpAddresses() {
			p := net.ParseIP(ip)
			if p == nil {
				return nil, nil, status.Errorf(codes.InvalidArgument, "invalid IP SAN %q", ip)
			}
			t.IPAddresses = append(t.IPAddresses, p)
		}
		if isEmptyName(t.RawSubject) && len(t.URIs)+len(t.DNSNames)+len(t.IPAddresses)+len(t.EmailAddresses) == 0 {
			return nil, nil, status.Error(codes.InvalidArgument, "The certificate must have a subject or a subject alternative name")
		}
		x := cfg.GetX509Config()
		if x.GetCaOptions().GetIsCa() {
			return nil, nil, status.Error(codes.InvalidArgument, "This CA pool's issuance policy does not allow CA certificates")
		}
		if x.GetKeyUsage() == nil {
			t.KeyUsage, t.ExtKeyUsage = baseline.KeyUsage, baseline.ExtKeyUsage
		} else {
			t.KeyUsage, t.ExtKeyUsage = keyUsage(x.GetKeyUsage())
		}
		return t, pub, nil
	}
	return nil, nil, status.Error(codes.InvalidArgument, "certificate must have a pem_csr or a config")
}

var (
	oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
	// emptyName is the DER of an empty RDNSequence.
	emptyName = []byte{0x30, 0x00}
)

// poolSetsExtension reports whether the pool, not the CSR, decides an
// extension: key usage, extended key usage and basic constraints (the
// baseline values) and the key identifiers.
func poolSetsExtension(id asn1.ObjectIdentifier) bool {
	for _, oid := range []asn1.ObjectIdentifier{
		{2, 5, 29, 15}, // keyUsage
		{2, 5, 29, 37}, // extKeyUsage
		{2, 5, 29, 19}, // basicConstraints
		{2, 5, 29, 14}, // subjectKeyIdentifier
		{2, 5, 29, 35}, // authorityKeyIdentifier
	} {
		if id.Equal(oid) {
			return true
		}
	}
	return false
}

// isEmptyName reports whether a DER Name holds no RDN.
func isEmptyName(raw []byte) bool {
	var rdns asn1.RawValue
	rest, err := asn1.Unmarshal(raw, &rdns)
	return len(raw) == 0 || (err == nil && len(rest) == 0 && len(rdns.Bytes) == 0)
}

var attributeOIDs = map[privatecapb.AttributeType]asn1.ObjectIdentifier{
	privatecapb.AttributeType_COMMON_NAME:         {2, 5, 4, 3},
	privatecapb.AttributeType_COUNTRY_CODE:        {2, 5, 4, 6},
	privatecapb.AttributeType_ORGANIZATION:        {2, 5, 4, 10},
	privatecapb.AttributeType_ORGANIZATIONAL_UNIT: {2, 5, 4, 11},
	privatecapb.AttributeType_LOCALITY:            {2, 5, 4, 7},
	privatecapb.AttributeType_PROVINCE:            {2, 5, 4, 8},
	privatecapb.AttributeType_STREET_ADDRESS:      {2, 5, 4, 9},
	privatecapb.AttributeType_POSTAL_CODE:         {2, 5, 4, 17},
}

// subjectName encodes a config's subject: from rdn_sequence when it is set
// (multi-valued RDNs kept), else from the named fields (empty ones left
// out).
func subjectName(s *privatecapb.Subject) ([]byte, error) {
	if rdns := s.GetRdnSequence(); len(rdns) > 0 {
		var seq pkix.RDNSequence
		for _, rdn := range rdns {
			var set pkix.RelativeDistinguishedNameSET
			for _, a := range rdn.GetAttributes() {
				oid, ok := attributeOIDs[a.GetType()]
				if id := a.GetObjectId(); id != nil {
					oid, ok = nil, len(id.GetObjectIdPath()) >= 2
					for _, x := range id.GetObjectIdPath() {
						oid = append(oid, int(x))
					}
				}
				if !ok {
					return nil, status.Error(codes.InvalidArgument, "subject.rdn_sequence: an attribute has no type")
				}
				set = append(set, pkix.AttributeTypeAndValue{Type: oid, Value: a.GetValue()})
			}
			if len(set) == 0 {
				return nil, status.Error(codes.InvalidArgument, "subject.rdn_sequence: an RDN has no attribute")
			}
			seq = append(seq, set)
		}
		return marshalName(seq)
	}
	var n pkix.Name
	add := func(dst *[]string, v string) {
		if v != "" {
			*dst = append(*dst, v)
		}
	}
	n.CommonName = s.GetCommonName()
	add(&n.Country, s.GetCountryCode())
	add(&n.Organization, s.GetOrganization())
	add(&n.OrganizationalUnit, s.GetOrganizationalUnit())
	add(&n.Locality, s.GetLocality())
	add(&n.Province, s.GetProvince())
	add(&n.StreetAddress, s.GetStreetAddress())
	add(&n.PostalCode, s.GetPostalCode())
	return marshalName(n.ToRDNSequence())
}

func marshalName(seq pkix.RDNSequence) ([]byte, error) {
	der, err := asn1.Marshal(seq)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "subject does not encode: %v", err)
	}
	return der, nil
}

func keyUsage(k *privatecapb.KeyUsage) (x509.KeyUsage, []x509.ExtKeyUsage) {
	var u x509.KeyUsage
	b := k.GetBaseKeyUsage()
	flags := []struct {
		on  bool
		bit x509.KeyUsage
	}{
		{b.GetDigitalSignature(), x509.KeyUsageDigitalSignature}, {b.GetContentCommitment(), x509.KeyUsageContentCommitment},
		{b.GetKeyEncipherment(), x509.KeyUsageKeyEncipherment}, {b.GetDataEncipherment(), x509.KeyUsageDataEncipherment},
		{b.GetKeyAgreement(), x509.KeyUsageKeyAgreement}, {b.GetCertSign(), x509.KeyUsageCertSign},
		{b.GetCrlSign(), x509.KeyUsageCRLSign}, {b.GetEncipherOnly(), x509.KeyUsageEncipherOnly},
		{b.GetDecipherOnly(), x509.KeyUsageDecipherOnly},
	}
	for _, f := range flags {
		if f.on {
			u |= f.bit
		}
	}
	var eku []x509.ExtKeyUsage
	e := k.GetExtendedKeyUsage()
	for _, f := range []struct {
		on bool
		u  x509.ExtKeyUsage
	}{
		{e.GetServerAuth(), x509.ExtKeyUsageServerAuth}, {e.GetClientAuth(), x509.ExtKeyUsageClientAuth},
		{e.GetCodeSigning(), x509.ExtKeyUsageCodeSigning}, {e.GetEmailProtection(), x509.ExtKeyUsageEmailProtection},
		{e.GetTimeStamping(), x509.ExtKeyUsageTimeStamping}, {e.GetOcspSigning(), x509.ExtKeyUsageOCSPSigning},
	} {
		if f.on {
			eku = append(eku, f.u)
		}
	}
	return u, eku
}

// FetchCaCerts returns each CA's chain, from the CA to its root.
func (s *Server) FetchCaCerts(ctx context.Context, req *privatecapb.FetchCaCertsRequest) (*privatecapb.FetchCaCertsResponse, error) {
	if req.GetCaPool() != s.PoolName {
		return nil, status.Errorf(codes.NotFound, "Resource '%s' was not found", req.GetCaPool())
	}
	out := &privatecapb.FetchCaCertsResponse{}
	for _, id := range s.ids {
		ca := s.cas[id]
		out.CaCerts = append(out.CaCerts, &privatecapb.FetchCaCertsResponse_CertChain{Certificates: []string{ca.subPEM, ca.rootPEM}})
	}
	return out, nil
}

// GetCaPool describes the pool.
func (s *Server) GetCaPool(ctx context.Context, req *privatecapb.GetCaPoolRequest) (*privatecapb.CaPool, error) {
	if req.GetName() != s.PoolName {
		return nil, status.Errorf(codes.NotFound, "Resource '%s' was not found", req.GetName())
	}
	tier := privatecapb.CaPool_ENTERPRISE
	if s.opts.Tier == "DEVOPS" {
		tier = privatecapb.CaPool_DEVOPS
	}
	pool := &privatecapb.CaPool{Name: s.PoolName, Tier: tier}
	if s.opts.MaximumLifetime > 0 {
		pool.IssuancePolicy = &privatecapb.CaPool_IssuancePolicy{MaximumLifetime: durationpb.New(s.opts.MaximumLifetime)}
	}
	return pool, nil
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}
