// Package gcpcas is the broker's Google Cloud Certificate Authority Service
// backend: it has a CA pool issue each approved certificate with one
// synchronous CreateCertificate call, idempotent across retries, and reads
// the pool's roots with FetchCaCerts when they are not configured.
//
// CA Service copies a pem_csr's subject, subjectAltName and (as far as the
// pool's passthrough_extensions allow) its other requested extensions into
// the certificate. The request therefore carries the workload's CSR
// (pem_csr) only when the CSR's DER says exactly what was approved: a raw
// subject byte-equal to the approved one, no attribute but one
// extensionRequest, no extension but a subjectAltName naming exactly the
// approved names (see csrMismatch). Otherwise, which includes the Istio
// agent's CSR with its empty "O=" attribute, it carries a config built from
// the approved template alone (the CSR's public key, the template's subject,
// SANs and usages, is_ca false), so the certificate never holds a name the
// broker's policy did not approve. In pem_csr mode the key usages are the
// pool's (baseline values or certificate template); in config mode the
// template's, subject to the pool's policy. Either way the broker verifies
// what comes back, subject included (verify.Chain).
//
// The request_id and certificate_id are derived from the request alone
// (pool, CA, certificate template, the CSR's DER, the approved subject,
// names, validity and usages), never from the clock or a random source: the
// same Request always yields the same IDs, so a retry of it, by this
// backend or by the broker for an agent retrying the same CSR with the same
// approved template, is answered by CA Service from its record of the first
// (it keeps request IDs for 60 minutes) instead of issuing a second,
// orphaned certificate.
package gcpcas

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	privateca "cloud.google.com/go/security/privateca/apiv1"
	"cloud.google.com/go/security/privateca/apiv1/privatecapb"
	"github.com/google/uuid"
	"github.com/googleapis/gax-go/v2"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/dn"
)

// Type is the backend's name in the configuration.
const Type = "gcpcas"

func init() {
	backends.RegisterConfig(Type, func(ctx context.Context, cfg Config, opts backends.Options) (backends.Signer, error) {
		return New(ctx, cfg, opts.Logger)
	})
}

// anchorsRefresh is how long roots read from the pool are reused, so a CA
// added to the pool (a root rotation) is noticed without a restart.
const anchorsRefresh = 10 * time.Minute

// requestIDSpace namespaces the broker's name-based request UUIDs.
var requestIDSpace = uuid.MustParse("9e1d4a52-7d7c-4c2e-9c55-2f0c2a6d1b3e")

// Signer issues certificates from one CA pool.
type Signer struct {
	cfg    Config
	client *privateca.CertificateAuthorityClient
	log    *slog.Logger
	retry  backends.RetryPolicy

	anchorsMu      sync.Mutex
	anchors        []*x509.Certificate
	anchorsFetched time.Time
	anchorsFromAPI bool
}

// New validates cfg and builds the CA Service client. It makes no call:
// the broker's identity may hold only roles/privateca.certificateRequester,
// which can create certificates and nothing else.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Signer, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Signer{cfg: cfg, log: log.With("backend", Type, "caPool", cfg.parent()), retry: backends.NewRetryPolicy()}
	if cfg.TrustAnchorsFile != "" {
		var err error
		if s.anchors, err = backends.ReadCertificates(cfg.TrustAnchorsFile); err != nil {
			return nil, fmt.Errorf("gcpcas: trustAnchorsFile: %w", err)
		}
	} else {
		s.anchorsFromAPI = true
	}

	opts := []option.ClientOption{
		// Reconnect quickly after an outage (gRPC's default backoff grows
		// to two minutes, far beyond a workload's patience); at most 1s
		// apart, so a reconnect falls inside one RetryPolicy.
		option.WithGRPCDialOption(grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 5 * time.Second,
		})),
	}
	if cfg.Endpoint != "" {
		opts = append(opts, option.WithEndpoint(cfg.Endpoint))
	}
	switch {
	case cfg.Insecure:
		opts = append(opts, option.WithoutAuthentication(),
			option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	case cfg.CredentialsFile != "":
		o, err := credentialsOption(cfg.CredentialsFile)
		if err != nil {
			return nil, err
		}
		opts = append(opts, o)
	}
	// The client keeps the context it is created with for refreshing
	// credentials; the factory's may be cancelled once startup is over.
	client, err := privateca.NewCertificateAuthorityClient(context.WithoutCancel(ctx), opts...)
	if err != nil {
		return nil, fmt.Errorf("gcpcas: creating the CA Service client: %w", err)
	}
	// The generated defaults retry Unavailable for up to 60s with their own
	// backoff; every retry belongs in our RetryPolicy, inside the caller's
	// deadline.
	client.CallOptions.CreateCertificate = []gax.CallOption{}
	client.CallOptions.FetchCaCerts = []gax.CallOption{}
	s.client = client
	return s, nil
}

// Close releases the client's connections.
func (s *Signer) Close() error { return s.client.Close() }

// Sign issues req's certificate and returns leaf, issuing CA and root.
func (s *Signer) Sign(ctx context.Context, req *backends.Request) ([]*x509.Certificate, error) {
	if req == nil || req.CSR == nil || req.Template == nil {
		return nil, fmt.Errorf("gcpcas: %w: incomplete request", backends.ErrRefused)
	}
	if req.Template.NotAfter.IsZero() {
		return nil, fmt.Errorf("gcpcas: %w: template has no NotAfter", backends.ErrRefused)
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	creq, err := s.createRequest(req)
	if err != nil {
		return nil, err
	}
	var cert *privatecapb.Certificate
	err = s.retry.Do(ctx, func(ctx context.Context) error {
		// Recomputed per attempt so a late retry still ends at the
		// template's NotAfter; the request ID stays the same, so an
		// attempt that did reach the CA is answered from its record.
		lifetime := time.Until(req.Template.NotAfter).Truncate(time.Second)
		if lifetime < time.Second {
			return fmt.Errorf("gcpcas: %w: template NotAfter %s is already past", backends.ErrRefused, req.Template.NotAfter)
		}
		creq.Certificate.Lifetime = durationpb.New(lifetime)
		var err error
		cert, err = s.client.CreateCertificate(ctx, creq)
		if err != nil {
			return classify("creating the certificate", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	pemData := cert.GetPemCertificate()
	for _, c := range cert.GetPemCertificateChain() {
		pemData += "\n" + c
	}
	chain, err := backends.ParseCertificates([]byte(pemData))
	if err != nil {
		return nil, fmt.Errorf("gcpcas: parsing certificate %s: %w: %w", cert.GetName(), backends.ErrUnavailable, err)
	}
	return chain, nil
}

func (s *Signer) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= s.cfg.Timeout.Duration {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, s.cfg.Timeout.Duration)
}

// createRequest builds CreateCertificate's request, lifetime aside. The
// request ID and certificate ID are a function of req (and the
// configuration) alone, so a retry is recognised as one (CA Service
// remembers request IDs for an hour).
func (s *Signer) createRequest(req *backends.Request) (*privatecapb.CreateCertificateRequest, error) {
	sum, err := requestHash(s.cfg.parent(), s.cfg.CaID, s.cfg.CertificateTemplate, req)
	if err != nil {
		return nil, fmt.Errorf("gcpcas: %w: %w", backends.ErrRefused, err)
	}
	cert := &privatecapb.Certificate{CertificateTemplate: s.cfg.CertificateTemplate}
	if why := csrMismatch(req); why == nil {
		cert.CertificateConfig = &privatecapb.Certificate_PemCsr{
			PemCsr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: req.CSR.Raw})),
		}
	} else {
		s.log.Debug("sending a config built from the approved template, not the CSR", "reason", why.Error())
		cfg, err := certificateConfig(req)
		if err != nil {
			return nil, fmt.Errorf("gcpcas: %w: %w", backends.ErrRefused, err)
		}
		cert.CertificateConfig = &privatecapb.Certificate_Config{Config: cfg}
	}
	return &privatecapb.CreateCertificateRequest{
		Parent:                        s.cfg.parent(),
		CertificateId:                 "meshca-" + hex.EncodeToString(sum[:20]),
		RequestId:                     uuid.NewSHA1(requestIDSpace, sum[:]).String(),
		IssuingCertificateAuthorityId: s.cfg.CaID,
		Certificate:                   cert,
	}, nil
}

// requestHash digests everything that decides what is issued, each field
// length-prefixed and in a fixed order: equal Requests give equal sums,
// whenever and however often they are built, and a change to any approved
// value gives another.
func requestHash(parent, caID, template string, req *backends.Request) ([32]byte, error) {
	var sum [32]byte
	t := req.Template
	subj, err := dn.Of(t)
	if err != nil {
		return sum, fmt.Errorf("approved subject does not encode: %v", err)
	}
	h := sha256.New()
	field := func(b []byte) {
		_ = binary.Write(h, binary.BigEndian, uint32(len(b)))
		h.Write(b)
	}
	number := func(v int64) { _ = binary.Write(h, binary.BigEndian, v) }
	field([]byte(parent))
	field([]byte(caID))
	field([]byte(template))
	field(req.CSR.Raw)
	field(subj)
	names := templateNames(t) // in the template's order: it is the certificate's
	number(int64(len(names)))
	for _, n := range names {
		number(int64(n.tag))
		field(n.value)
	}
	number(t.NotBefore.Unix())
	number(t.NotAfter.Unix())
	number(int64(t.KeyUsage))
	number(int64(len(t.ExtKeyUsage)))
	for _, u := range t.ExtKeyUsage {
		number(int64(u))
	}
	number(int64(len(t.UnknownExtKeyUsage)))
	for _, oid := range t.UnknownExtKeyUsage {
		field([]byte(oid.String()))
	}
	h.Sum(sum[:0])
	return sum, nil
}

// certificateConfig expresses the template for config-mode issuance. Only
// the CSR's public key is taken from the CSR.
func certificateConfig(req *backends.Request) (*privatecapb.CertificateConfig, error) {
	t := req.Template
	spki := req.CSR.RawSubjectPublicKeyInfo
	if len(spki) == 0 {
		return nil, errors.New("CSR has no public key")
	}
	san := &privatecapb.SubjectAltNames{DnsNames: t.DNSNames, EmailAddresses: t.EmailAddresses}
	for _, u := range t.URIs {
		san.Uris = append(san.Uris, u.String())
	}
	for _, ip := range t.IPAddresses {
		san.IpAddresses = append(san.IpAddresses, ip.String())
	}
	subj, err := subject(t)
	if err != nil {
		return nil, err
	}
	if proto.Equal(subj, &privatecapb.Subject{}) && len(san.DnsNames)+len(san.EmailAddresses)+len(san.Uris)+len(san.IpAddresses) == 0 {
		return nil, errors.New("the approved certificate has neither a subject nor a subject alternative name; CA Service requires one")
	}
	ku, err := keyUsage(t)
	if err != nil {
		return nil, err
	}
	isCA := false
	return &privatecapb.CertificateConfig{
		PublicKey: &privatecapb.PublicKey{
			Format: privatecapb.PublicKey_PEM,
			Key:    pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}),
		},
		SubjectConfig: &privatecapb.CertificateConfig_SubjectConfig{Subject: subj, SubjectAltName: san},
		X509Config: &privatecapb.X509Parameters{
			KeyUsage:  ku,
			CaOptions: &privatecapb.X509Parameters_CaOptions{IsCa: &isCA},
		},
	}, nil
}

var (
	oidCommonName   = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidCountry      = asn1.ObjectIdentifier{2, 5, 4, 6}
	oidLocality     = asn1.ObjectIdentifier{2, 5, 4, 7}
	oidProvince     = asn1.ObjectIdentifier{2, 5, 4, 8}
	oidStreet       = asn1.ObjectIdentifier{2, 5, 4, 9}
	oidOrganization = asn1.ObjectIdentifier{2, 5, 4, 10}
	oidOrgUnit      = asn1.ObjectIdentifier{2, 5, 4, 11}
	oidPostalCode   = asn1.ObjectIdentifier{2, 5, 4, 17}
)

// subject maps the approved subject (its DER, every attribute) onto CA
// Service's Subject, which holds one value per common attribute; anything
// else cannot be expressed and is refused. Attributes with empty values say
// nothing and are left out. The empty subject the broker approves is an
// empty Subject message with the SANs beside it, as Istio's own CA Service
// client sends it: a certificate with an empty subject and (critical)
// subjectAltName.
func subject(t *x509.Certificate) (*privatecapb.Subject, error) {
	raw, err := dn.Of(t)
	if err != nil {
		return nil, fmt.Errorf("approved subject does not encode: %v", err)
	}
	attrs, err := dn.Valued(raw)
	if err != nil {
		return nil, fmt.Errorf("approved subject: %v", err)
	}
	s := &privatecapb.Subject{}
	fields := map[string]*string{
		oidCommonName.String(): &s.CommonName, oidCountry.String(): &s.CountryCode, oidLocality.String(): &s.Locality,
		oidProvince.String(): &s.Province, oidStreet.String(): &s.StreetAddress, oidOrganization.String(): &s.Organization,
		oidOrgUnit.String(): &s.OrganizationalUnit, oidPostalCode.String(): &s.PostalCode,
	}
	for _, a := range attrs {
		dst, ok := fields[a.Type.String()]
		if !ok || *dst != "" || a.Class != asn1.ClassUniversal || !textTags[a.Tag] || !utf8.Valid(a.Value) {
			return nil, fmt.Errorf("approved subject [%s] cannot be expressed in a CA Service config (one text value per common attribute)", dn.Describe(attrs))
		}
		*dst = string(a.Value)
	}
	return s, nil
}

// textTags are the string types whose content octets are the text itself.
var textTags = map[int]bool{asn1.TagUTF8String: true, asn1.TagPrintableString: true, asn1.TagIA5String: true, asn1.TagNumericString: true}

func keyUsage(t *x509.Certificate) (*privatecapb.KeyUsage, error) {
	k := t.KeyUsage
	out := &privatecapb.KeyUsage{
		BaseKeyUsage: &privatecapb.KeyUsage_KeyUsageOptions{
			DigitalSignature:  k&x509.KeyUsageDigitalSignature != 0,
			ContentCommitment: k&x509.KeyUsageContentCommitment != 0,
			KeyEncipherment:   k&x509.KeyUsageKeyEncipherment != 0,
			DataEncipherment:  k&x509.KeyUsageDataEncipherment != 0,
			KeyAgreement:      k&x509.KeyUsageKeyAgreement != 0,
			CertSign:          k&x509.KeyUsageCertSign != 0,
			CrlSign:           k&x509.KeyUsageCRLSign != 0,
			EncipherOnly:      k&x509.KeyUsageEncipherOnly != 0,
			DecipherOnly:      k&x509.KeyUsageDecipherOnly != 0,
		},
		ExtendedKeyUsage: &privatecapb.KeyUsage_ExtendedKeyUsageOptions{},
	}
	e := out.ExtendedKeyUsage
	for _, u := range t.ExtKeyUsage {
		switch u {
		case x509.ExtKeyUsageServerAuth:
			e.ServerAuth = true
		case x509.ExtKeyUsageClientAuth:
			e.ClientAuth = true
		case x509.ExtKeyUsageCodeSigning:
			e.CodeSigning = true
		case x509.ExtKeyUsageEmailProtection:
			e.EmailProtection = true
		case x509.ExtKeyUsageTimeStamping:
			e.TimeStamping = true
		case x509.ExtKeyUsageOCSPSigning:
			e.OcspSigning = true
		default:
			return nil, fmt.Errorf("extended key usage %d cannot be expressed to CA Service", u)
		}
	}
	for _, oid := range t.UnknownExtKeyUsage {
		id := &privatecapb.ObjectId{}
		for _, n := range oid {
			id.ObjectIdPath = append(id.ObjectIdPath, int32(n))
		}
		out.UnknownExtendedKeyUsages = append(out.UnknownExtendedKeyUsages, id)
	}
	return out, nil
}

// classify wraps a CA Service error in the backends kind the server maps
// to a gRPC code, keeping Google's status in the text.
func classify(doing string, err error) error {
	return fmt.Errorf("gcpcas: %s: %w: %w", doing, kindOf(err), err)
}

func kindOf(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		// Not a status: the call never got an answer (dial failure,
		// context ended before sending).
		return backends.ErrUnavailable
	}
	switch st.Code() {
	case codes.ResourceExhausted:
		return backends.ErrThrottled
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.Internal, codes.Unknown, codes.Canceled:
		return backends.ErrUnavailable
	}
	// InvalidArgument, FailedPrecondition, PermissionDenied, NotFound,
	// AlreadyExists, Unauthenticated, OutOfRange, Unimplemented: asking
	// again will not change the answer.
	return backends.ErrRefused
}

// TrustAnchors returns the configured roots, or the roots that end the
// pool's CA chains as FetchCaCerts reports them (re-read every few
// minutes).
func (s *Signer) TrustAnchors(ctx context.Context) ([]*x509.Certificate, error) {
	s.anchorsMu.Lock()
	defer s.anchorsMu.Unlock()
	if !s.anchorsFromAPI || (s.anchors != nil && time.Since(s.anchorsFetched) < anchorsRefresh) {
		return s.anchors, nil
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	var resp *privatecapb.FetchCaCertsResponse
	err := s.retry.Do(ctx, func(ctx context.Context) error {
		var err error
		resp, err = s.client.FetchCaCerts(ctx, &privatecapb.FetchCaCertsRequest{CaPool: s.cfg.parent()})
		if err != nil {
			return classify("fetching the pool's CA certificates", err)
		}
		return nil
	})
	if err != nil {
		if s.anchors != nil {
			s.log.Warn("could not refresh trust anchors from CA Service; keeping the ones read before", "error", err)
			return s.anchors, nil
		}
		return nil, err
	}
	var roots []*x509.Certificate
	for _, chain := range resp.GetCaCerts() {
		certs := chain.GetCertificates()
		if len(certs) == 0 {
			continue
		}
		// Each chain runs from a CA of the pool to its root.
		parsed, err := backends.ParseCertificates([]byte(certs[len(certs)-1]))
		if err != nil {
			return nil, fmt.Errorf("gcpcas: parsing the pool's CA certificates: %w: %w", backends.ErrUnavailable, err)
		}
		root := parsed[0]
		if !bytes.Equal(root.RawIssuer, root.RawSubject) || root.CheckSignatureFrom(root) != nil {
			return nil, fmt.Errorf("gcpcas: %w: a CA chain of the pool does not end in a self-signed root (last: %s)", backends.ErrRefused, root.Subject)
		}
		if !slices.ContainsFunc(roots, root.Equal) {
			roots = append(roots, root)
		}
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("gcpcas: %w: the pool %s has no CA certificates", backends.ErrRefused, s.cfg.parent())
	}
	if !slices.EqualFunc(roots, s.anchors, func(a, b *x509.Certificate) bool { return a.Equal(b) }) {
		for _, r := range roots {
			s.log.Warn("TRUST ANCHOR READ FROM CA SERVICE (FetchCaCerts), NOT FROM CONFIGURATION: workloads will trust this root; pin it with trustAnchorsFile",
				"subject", r.Subject.String(), "sha256", fmt.Sprintf("%X", sha256.Sum256(r.Raw)), "notAfter", r.NotAfter)
		}
	}
	s.anchors, s.anchorsFetched = roots, time.Now()
	return s.anchors, nil
}
