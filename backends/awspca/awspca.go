// Package awspca is the broker's AWS Private CA (ACM PCA) backend: it has a
// Private CA certificate authority issue each approved certificate through
// IssueCertificate, with the certificate's names, usages and lifetime set
// by the broker through ApiPassthrough and Validity, and fetches the result
// with GetCertificate.
//
// Private CA is strict about CSRs with an empty subject: it refuses them
// (MalformedCSRException) unless their subjectAltName extension is marked
// critical, as RFC 5280 requires. The broker cannot rewrite a CSR (it does
// not hold the workload's key), so it sends it unchanged and relies on
// ApiPassthrough for everything the certificate says: the subject comes
// from the approved template, the SANs from the template's URIs and DNS
// names, never from the CSR. Should Private CA still refuse the CSR, the
// refusal reaches the workload as FailedPrecondition with AWS's message and
// a hint naming the CSR.
//
// The subject is the one thing ApiPassthrough cannot say: the
// *APIPassthrough templates take it "from API or CSR", and an empty subject
// cannot be sent, so with none in ApiPassthrough Private CA copies the
// CSR's. The approved subject of a SPIFFE certificate is empty; a CSR whose
// subject carries any attribute with a value (judged on the raw DER, every
// attribute type) is therefore refused here, before any call to Private CA,
// even though policy refuses it first. An empty-valued attribute, such as
// the "O=" of the Istio agent's CSRs, says nothing and passes; Private CA
// copies it as it is.
package awspca

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	"github.com/aws/aws-sdk-go-v2/service/acmpca"
	"github.com/aws/aws-sdk-go-v2/service/acmpca/types"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/dn"
)

// Type is the backend's name in the configuration.
const Type = "awspca"

func init() {
	backends.RegisterConfig(Type, func(ctx context.Context, cfg Config, opts backends.Options) (backends.Signer, error) {
		return New(ctx, cfg, opts.Logger)
	})
}

// anchorsRefresh is how long roots read from the CA are reused before they
// are read again, so a re-parented CA is noticed without a restart.
const anchorsRefresh = 10 * time.Minute

// Signer issues certificates from one Private CA.
type Signer struct {
	cfg    Config
	client *acmpca.Client
	log    *slog.Logger
	retry  backends.RetryPolicy

	algMu sync.Mutex
	alg   types.SigningAlgorithm

	anchorsMu      sync.Mutex
	anchors        []*x509.Certificate
	anchorsFetched time.Time
	anchorsFromAPI bool
}

// New validates cfg, builds the Private CA client and, unless the
// configuration fixes them, learns the CA's signing algorithm; a CA that
// cannot be reached yet is tolerated (it is asked again at the first Sign),
// one that refuses us is an error.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Signer, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Signer{
		cfg: cfg,
		log: log.With("backend", Type, "ca", cfg.CAArn),
		alg: types.SigningAlgorithm(cfg.SigningAlgorithm),
		// One retry budget for every call this signer makes to its CA:
		// under sustained throttling or an outage the CA sees about one
		// call per request, not one per attempt.
		retry: backends.NewRetryPolicy(),
	}
	if cfg.TrustAnchorsFile != "" {
		anchors, err := backends.ReadCertificates(cfg.TrustAnchorsFile)
		if err != nil {
			return nil, fmt.Errorf("awspca: trustAnchorsFile: %w", err)
		}
		s.anchors = anchors
	} else {
		s.anchorsFromAPI = true
	}

	awsCfg, err := config.LoadDefaultConfig(ctx, config.WithRegion(cfg.Region))
	if err != nil {
		return nil, fmt.Errorf("awspca: loading AWS configuration: %w", err)
	}
	if cfg.RoleArn != "" {
		provider := stscreds.NewAssumeRoleProvider(sts.NewFromConfig(awsCfg), cfg.RoleArn, func(o *stscreds.AssumeRoleOptions) {
			o.RoleSessionName = cfg.RoleSessionName
			if cfg.ExternalID != "" {
				o.ExternalID = aws.String(cfg.ExternalID)
			}
		})
		awsCfg.Credentials = aws.NewCredentialsCache(provider)
	}
	s.client = acmpca.NewFromConfig(awsCfg, func(o *acmpca.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		// Every retry happens in our RetryPolicy, inside the caller's
		// deadline; the SDK's own retryer would add attempts and sleeps
		// the deadline does not know about.
		o.Retryer = aws.NopRetryer{}
	})

	if s.alg == "" {
		if _, err := s.signingAlgorithm(ctx); err != nil {
			if !backends.Retryable(err) {
				return nil, err
			}
			s.log.Warn("could not read the CA's key algorithm yet; will ask again when signing", "error", err)
		}
	}
	return s, nil
}

// signingAlgorithm returns the configured algorithm or the one derived
// from DescribeCertificateAuthority, asked once.
func (s *Signer) signingAlgorithm(ctx context.Context) (types.SigningAlgorithm, error) {
	s.algMu.Lock()
	defer s.algMu.Unlock()
	if s.alg != "" {
		return s.alg, nil
	}
	var out *acmpca.DescribeCertificateAuthorityOutput
	err := s.retry.Do(ctx, func(ctx context.Context) error {
		var err error
		out, err = s.client.DescribeCertificateAuthority(ctx, &acmpca.DescribeCertificateAuthorityInput{CertificateAuthorityArn: aws.String(s.cfg.CAArn)})
		if err != nil {
			return classify("describing the certificate authority", err)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	ca := out.CertificateAuthority
	if ca == nil || ca.CertificateAuthorityConfiguration == nil {
		return "", fmt.Errorf("awspca: describing the certificate authority: %w: answer has no configuration", backends.ErrUnavailable)
	}
	if ca.Status != types.CertificateAuthorityStatusActive {
		s.log.Warn("the certificate authority is not ACTIVE; Private CA will refuse to issue", "status", ca.Status)
	}
	alg, err := signingAlgorithmFor(ca.CertificateAuthorityConfiguration.KeyAlgorithm)
	if err != nil {
		return "", fmt.Errorf("awspca: %w: %w", backends.ErrRefused, err)
	}
	s.log.Info("signing algorithm derived from the CA's key", "keyAlgorithm", ca.CertificateAuthorityConfiguration.KeyAlgorithm, "signingAlgorithm", alg)
	s.alg = alg
	return alg, nil
}

// Sign issues req's certificate and returns leaf, subordinate CA(s) and root.
func (s *Signer) Sign(ctx context.Context, req *backends.Request) ([]*x509.Certificate, error) {
	if req == nil || req.CSR == nil || req.Template == nil {
		return nil, fmt.Errorf("awspca: %w: incomplete request", backends.ErrRefused)
	}
	// Before any call to the CA: a request Private CA would turn into a
	// certificate with a subject nobody approved is not sent at all.
	if err := checkSubject(req); err != nil {
		return nil, err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	alg, err := s.signingAlgorithm(ctx)
	if err != nil {
		return nil, err
	}
	in, err := s.issueInput(req, alg)
	if err != nil {
		return nil, err
	}
	var certArn string
	err = s.retry.Do(ctx, func(ctx context.Context) error {
		out, err := s.client.IssueCertificate(ctx, in)
		if err != nil {
			return classify("issuing the certificate", err)
		}
		if out.CertificateArn == nil {
			return fmt.Errorf("awspca: issuing the certificate: %w: answer has no CertificateArn", backends.ErrUnavailable)
		}
		certArn = *out.CertificateArn
		return nil
	})
	if err != nil {
		return nil, explainCSRRefusal(err, req)
	}
	return s.waitIssued(ctx, certArn)
}

// checkSubject refuses a request whose approved subject is empty while its
// CSR's subject says something: ApiPassthrough cannot carry an empty
// subject, so the templates would take the CSR's ("from API or CSR").
// Both are judged on the raw DER, so attribute types crypto/x509's parsed
// Name drops (emailAddress, DC, UID, ...) count too.
func checkSubject(req *backends.Request) error {
	approved, err := dn.Of(req.Template)
	if err != nil {
		return fmt.Errorf("awspca: %w: approved subject does not encode: %v", backends.ErrRefused, err)
	}
	want, err := dn.Valued(approved)
	if err != nil {
		return fmt.Errorf("awspca: %w: approved subject: %v", backends.ErrRefused, err)
	}
	if len(want) > 0 {
		// Sent in ApiPassthrough, which wins over the CSR's.
		return nil
	}
	got, err := dn.Valued(req.CSR.RawSubject)
	if err != nil {
		return fmt.Errorf("awspca: %w: the CSR's subject cannot be read (%v), and Private CA would copy it into the certificate", backends.ErrRefused, err)
	}
	if len(got) > 0 {
		return fmt.Errorf("awspca: %w: the CSR's subject carries [%s] and the approved subject is empty; "+
			"ApiPassthrough cannot express an empty subject, so Private CA would copy these attributes from the CSR into the certificate: "+
			"the CSR must have an empty subject (or only empty-valued attributes)", backends.ErrRefused, dn.Describe(got))
	}
	return nil
}

// bound applies the configured timeout unless the caller's deadline is
// sooner.
func (s *Signer) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= s.cfg.Timeout.Duration {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, s.cfg.Timeout.Duration)
}

// waitIssued polls GetCertificate until Private CA has signed: issuance is
// asynchronous and the first polls usually answer RequestInProgress. The
// SDK's waiter would wait at least a second between polls; a workload is
// waiting, so this polls faster, and keeps polling through throttling and
// transient failures while the deadline allows.
func (s *Signer) waitIssued(ctx context.Context, certArn string) ([]*x509.Certificate, error) {
	in := &acmpca.GetCertificateInput{CertificateArn: aws.String(certArn), CertificateAuthorityArn: aws.String(s.cfg.CAArn)}
	interval := s.cfg.PollInterval.Duration
	backoff := 100 * time.Millisecond
	for {
		out, err := s.client.GetCertificate(ctx, in)
		var wait time.Duration
		switch {
		case err == nil:
			return parseIssued(out)
		case errorCode(err) == "RequestInProgressException":
			err = fmt.Errorf("awspca: certificate %s: %w: still being issued", certArn, backends.ErrUnavailable)
			wait = interval
			interval = min(interval*3/2, 4*s.cfg.PollInterval.Duration)
		default:
			err = classify("fetching certificate "+certArn, err)
			if !backends.Retryable(err) {
				return nil, err
			}
			wait = backoff
			backoff = min(backoff*2, 2*time.Second)
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return nil, fmt.Errorf("%w (no time left in the deadline to poll again)", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (gave up: %v)", err, ctx.Err())
		case <-t.C:
		}
	}
}

func parseIssued(out *acmpca.GetCertificateOutput) ([]*x509.Certificate, error) {
	if out.Certificate == nil {
		return nil, fmt.Errorf("awspca: fetching the certificate: %w: answer has no Certificate", backends.ErrUnavailable)
	}
	pemData := *out.Certificate + "\n"
	if out.CertificateChain != nil {
		pemData += *out.CertificateChain
	}
	chain, err := backends.ParseCertificates([]byte(pemData))
	if err != nil {
		return nil, fmt.Errorf("awspca: parsing the issued certificate: %w: %w", backends.ErrUnavailable, err)
	}
	return chain, nil
}

// issueInput builds IssueCertificate's input. Everything the certificate
// says comes from the approved template through ApiPassthrough; the CSR
// goes along only as the public key's carrier.
func (s *Signer) issueInput(req *backends.Request, alg types.SigningAlgorithm) (*acmpca.IssueCertificateInput, error) {
	t := req.Template
	if t.NotAfter.IsZero() {
		return nil, fmt.Errorf("awspca: %w: template has no NotAfter", backends.ErrRefused)
	}
	pt, err := passthrough(t)
	if err != nil {
		return nil, fmt.Errorf("awspca: %w: %w", backends.ErrRefused, err)
	}
	in := &acmpca.IssueCertificateInput{
		CertificateAuthorityArn: aws.String(s.cfg.CAArn),
		Csr:                     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: req.CSR.Raw}),
		SigningAlgorithm:        alg,
		TemplateArn:             aws.String(s.cfg.TemplateArn),
		// ABSOLUTE (seconds since the epoch) says exactly the template's
		// NotAfter; DAYS would round it.
		Validity:       &types.Validity{Type: types.ValidityPeriodTypeAbsolute, Value: aws.Int64(t.NotAfter.Unix())},
		ApiPassthrough: pt,
	}
	if !t.NotBefore.IsZero() {
		in.ValidityNotBefore = &types.Validity{Type: types.ValidityPeriodTypeAbsolute, Value: aws.Int64(t.NotBefore.Unix())}
	}
	in.IdempotencyToken = aws.String(idempotencyToken(in, req))
	return in, nil
}

// idempotencyToken derives the token from what is being asked, so that a
// retried IssueCertificate (after a timeout whose first attempt did reach
// the CA) returns the certificate already issued instead of a second one.
// Private CA remembers tokens for five minutes and accepts at most 36
// characters.
func idempotencyToken(in *acmpca.IssueCertificateInput, req *backends.Request) string {
	h := sha256.New()
	field := func(b []byte) {
		_ = binary.Write(h, binary.BigEndian, uint32(len(b)))
		h.Write(b)
	}
	field([]byte(aws.ToString(in.CertificateAuthorityArn)))
	field([]byte(aws.ToString(in.TemplateArn)))
	field([]byte(in.SigningAlgorithm))
	field(req.CSR.Raw)
	field(req.Template.RawSubject)
	field([]byte(req.Template.Subject.String()))
	for _, u := range req.Template.URIs {
		field([]byte("uri:" + u.String()))
	}
	for _, d := range req.Template.DNSNames {
		field([]byte("dns:" + d))
	}
	for _, ip := range req.Template.IPAddresses {
		field([]byte("ip:" + ip.String()))
	}
	_ = binary.Write(h, binary.BigEndian, req.Template.NotBefore.Unix())
	_ = binary.Write(h, binary.BigEndian, req.Template.NotAfter.Unix())
	_ = binary.Write(h, binary.BigEndian, uint32(req.Template.KeyUsage))
	for _, u := range req.Template.ExtKeyUsage {
		_ = binary.Write(h, binary.BigEndian, int32(u))
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

var ekuTypes = map[x509.ExtKeyUsage]types.ExtendedKeyUsageType{
	x509.ExtKeyUsageServerAuth:      types.ExtendedKeyUsageTypeServerAuth,
	x509.ExtKeyUsageClientAuth:      types.ExtendedKeyUsageTypeClientAuth,
	x509.ExtKeyUsageCodeSigning:     types.ExtendedKeyUsageTypeCodeSigning,
	x509.ExtKeyUsageEmailProtection: types.ExtendedKeyUsageTypeEmailProtection,
	x509.ExtKeyUsageTimeStamping:    types.ExtendedKeyUsageTypeTimeStamping,
	x509.ExtKeyUsageOCSPSigning:     types.ExtendedKeyUsageTypeOcspSigning,
}

// passthrough expresses the template's subject, names and usages as
// ApiPassthrough. The EndEntity*_APIPassthrough templates fix key usages
// themselves (and win over these); Blank* templates take them from here.
func passthrough(t *x509.Certificate) (*types.ApiPassthrough, error) {
	ext := &types.Extensions{}
	for _, u := range t.URIs {
		ext.SubjectAlternativeNames = append(ext.SubjectAlternativeNames, types.GeneralName{UniformResourceIdentifier: aws.String(u.String())})
	}
	for _, d := range t.DNSNames {
		ext.SubjectAlternativeNames = append(ext.SubjectAlternativeNames, types.GeneralName{DnsName: aws.String(d)})
	}
	for _, ip := range t.IPAddresses {
		ext.SubjectAlternativeNames = append(ext.SubjectAlternativeNames, types.GeneralName{IpAddress: aws.String(ip.String())})
	}
	for _, e := range t.EmailAddresses {
		ext.SubjectAlternativeNames = append(ext.SubjectAlternativeNames, types.GeneralName{Rfc822Name: aws.String(e)})
	}
	if t.KeyUsage != 0 {
		k := t.KeyUsage
		ext.KeyUsage = &types.KeyUsage{
			DigitalSignature: k&x509.KeyUsageDigitalSignature != 0,
			NonRepudiation:   k&x509.KeyUsageContentCommitment != 0,
			KeyEncipherment:  k&x509.KeyUsageKeyEncipherment != 0,
			DataEncipherment: k&x509.KeyUsageDataEncipherment != 0,
			KeyAgreement:     k&x509.KeyUsageKeyAgreement != 0,
			KeyCertSign:      k&x509.KeyUsageCertSign != 0,
			CRLSign:          k&x509.KeyUsageCRLSign != 0,
			EncipherOnly:     k&x509.KeyUsageEncipherOnly != 0,
			DecipherOnly:     k&x509.KeyUsageDecipherOnly != 0,
		}
	}
	for _, u := range t.ExtKeyUsage {
		typ, ok := ekuTypes[u]
		if !ok {
			return nil, fmt.Errorf("extended key usage %d cannot be expressed to Private CA", u)
		}
		ext.ExtendedKeyUsage = append(ext.ExtendedKeyUsage, types.ExtendedKeyUsage{ExtendedKeyUsageType: typ})
	}
	for _, oid := range t.UnknownExtKeyUsage {
		ext.ExtendedKeyUsage = append(ext.ExtendedKeyUsage, types.ExtendedKeyUsage{ExtendedKeyUsageObjectIdentifier: aws.String(oid.String())})
	}
	pt := &types.ApiPassthrough{Extensions: ext}
	subj, err := subject(t)
	if err != nil {
		return nil, err
	}
	pt.Subject = subj
	return pt, nil
}

// subject renders the template's subject as custom attributes, which carry
// any attribute in its order; empty-valued attributes, which say nothing,
// are left out. nil for a subject without a valued attribute: Private CA
// then takes the CSR's subject, which checkSubject has made sure says
// nothing either.
func subject(t *x509.Certificate) (*types.ASN1Subject, error) {
	raw, err := dn.Of(t)
	if err != nil {
		return nil, fmt.Errorf("template subject: %w", err)
	}
	var rdns pkix.RDNSequence
	if rest, err := asn1.Unmarshal(raw, &rdns); err != nil || len(rest) > 0 {
		return nil, fmt.Errorf("template subject: not a DER name (%v)", err)
	}
	var attrs []types.CustomAttribute
	for _, rdn := range rdns {
		for _, a := range rdn {
			v, ok := a.Value.(string)
			if !ok {
				return nil, fmt.Errorf("template subject attribute %s is not a string", a.Type)
			}
			if v == "" {
				continue
			}
			attrs = append(attrs, types.CustomAttribute{ObjectIdentifier: aws.String(a.Type.String()), Value: aws.String(v)})
		}
	}
	if len(attrs) == 0 {
		return nil, nil
	}
	return &types.ASN1Subject{CustomAttributes: attrs}, nil
}

// TrustAnchors returns the configured roots, or the root at the end of the
// CA's own chain as Private CA reports it (re-read every few minutes).
func (s *Signer) TrustAnchors(ctx context.Context) ([]*x509.Certificate, error) {
	s.anchorsMu.Lock()
	defer s.anchorsMu.Unlock()
	if !s.anchorsFromAPI || (s.anchors != nil && time.Since(s.anchorsFetched) < anchorsRefresh) {
		return s.anchors, nil
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	var out *acmpca.GetCertificateAuthorityCertificateOutput
	err := s.retry.Do(ctx, func(ctx context.Context) error {
		var err error
		out, err = s.client.GetCertificateAuthorityCertificate(ctx, &acmpca.GetCertificateAuthorityCertificateInput{CertificateAuthorityArn: aws.String(s.cfg.CAArn)})
		if err != nil {
			return classify("reading the CA certificate chain", err)
		}
		return nil
	})
	if err != nil {
		if s.anchors != nil {
			s.log.Warn("could not refresh trust anchors from Private CA; keeping the ones read before", "error", err)
			return s.anchors, nil
		}
		return nil, err
	}
	// Certificate is the CA itself; CertificateChain its parents up to the
	// root, absent for a root CA.
	pemData := aws.ToString(out.Certificate) + "\n" + aws.ToString(out.CertificateChain)
	certs, err := backends.ParseCertificates([]byte(pemData))
	if err != nil {
		return nil, fmt.Errorf("awspca: parsing the CA certificate chain: %w: %w", backends.ErrUnavailable, err)
	}
	root := certs[len(certs)-1]
	if !bytes.Equal(root.RawIssuer, root.RawSubject) || root.CheckSignatureFrom(root) != nil {
		return nil, fmt.Errorf("awspca: %w: the CA's chain does not end in a self-signed root (last: %s)", backends.ErrRefused, root.Subject)
	}
	if s.anchors == nil || !root.Equal(s.anchors[0]) {
		s.log.Warn("TRUST ANCHOR READ FROM AWS PRIVATE CA, NOT FROM CONFIGURATION: workloads will trust this root; pin it with trustAnchorsFile",
			"subject", root.Subject.String(), "sha256", fmt.Sprintf("%X", sha256.Sum256(root.Raw)), "notAfter", root.NotAfter)
	}
	s.anchors = []*x509.Certificate{root}
	s.anchorsFetched = time.Now()
	return s.anchors, nil
}
