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
//     pem_csr (subject and SANs from the CSR, key usages from the pool's
//     baseline: digital signature, key encipherment, TLS server and client)
//     or from a config (public key, subject, SANs and X.509 parameters from
//     the request); the issuing CA chosen by issuing_certificate_authority_id
//     or the first ENABLED CA; lifetime required, truncated to the pool's
//     maximum_lifetime and to the issuing CA's expiry; certificate_template
//     must exist; request_id must be a non-zero UUID and replays the first
//     answer for 60 minutes; certificate_id is required in the ENTERPRISE
//     tier, must match [a-zA-Z0-9_-]{1,63} and be unique (ALREADY_EXISTS);
//     validate_only issues nothing and returns no pem_certificate;
//   - the answer's pem_certificate and pem_certificate_chain (issuer to
//     root, the root included: the issuing CA's certificate then its root),
//     name, issuer_certificate_authority, lifetime, certificate_description;
//   - FetchCaCerts (one chain per CA of the pool, from the CA's own
//     certificate to its root) and GetCaPool;
//   - faults: RESOURCE_EXHAUSTED quota errors for the next K calls
//     (Throttle), added latency (SetLatency, for DEADLINE_EXCEEDED), CA
//     state (SetCAState: a non-ENABLED CA refuses with FAILED_PRECONDITION),
//     lost answers (DropAnswers: the work is done, the connection closed),
//     and an outage switch that drops every connection or answers
//     UNAVAILABLE (SetOutage).
//
// What it does not reproduce: authentication and IAM (no credentials are
// checked: tests dial it without authentication, over plaintext), the
// pool's identity constraints and CEL expressions, certificate templates'
// predefined values, passthrough extensions, CRLs, long-running operations
// and every method not listed above (UNIMPLEMENTED), error details
// (google.rpc.ErrorInfo / QuotaFailure), exact error wording, quotas and
// latencies of the real service. Issuance is synchronous, as CreateCertificate
// is in the real API: there is nothing to poll.
package gcpcas

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
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
	throttleN     int
	throttleOps   map[string]bool
	latency       time.Duration
	dropAnswers   map[string]int
	calls         map[string]int
	issued        int
	requests      map[string]requestEntry
	certIDs       map[string]string // certificate_id -> request_id
	lastCreate    *privatecapb.CreateCertificateRequest
	lastParamsHdr string
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
func (s *Server) Throttle(n int, methods ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.throttleN, s.throttleOps = n, nil
	if len(methods) > 0 {
		s.throttleOps = map[string]bool{}
		for _, m := range methods {
			s.throttleOps[m] = true
		}
	}
}

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
	throttled := s.throttleN > 0 && (s.throttleOps == nil || s.throttleOps[method])
	if throttled {
		s.throttleN--
	}
	s.mu.Unlock()
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
	if throttled {
		return nil, status.Errorf(codes.ResourceExhausted,
			"Quota exceeded for quota metric 'Certificate creation requests' and limit 'Certificate creation requests per minute per region' of service 'privateca.googleapis.com' for consumer 'project:%s'.", s.opts.Project)
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
	tmpl.SerialNumber = randomSerial()
	tmpl.NotBefore, tmpl.NotAfter = notBefore, notAfter
	tmpl.SignatureAlgorithm = signatureAlgorithm(s.opts.KeyAlgorithm)
	tmpl.SubjectKeyId = keyID(pub)
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.sub, pub, ca.subKey)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "could not issue the certificate: %v", err)
	}
	leaf, _ := x509.ParseCertificate(der)
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
		baseline.RawSubject = csr.RawSubject
		baseline.DNSNames, baseline.URIs, baseline.IPAddresses, baseline.EmailAddresses = csr.DNSNames, csr.URIs, csr.IPAddresses, csr.EmailAddresses
		if len(csr.Subject.Names) == 0 && len(csr.URIs)+len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) == 0 {
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
			t.Subject = subjectName(subj)
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
		if len(t.Subject.ToRDNSequence()) == 0 && len(t.URIs)+len(t.DNSNames)+len(t.IPAddresses)+len(t.EmailAddresses) == 0 {
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

func subjectName(s *privatecapb.Subject) pkix.Name {
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
	return n
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
