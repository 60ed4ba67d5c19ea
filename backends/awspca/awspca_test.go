package awspca

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/acmpca"
	"github.com/aws/aws-sdk-go-v2/service/acmpca/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/meshca/broker/backends"
)

const caArn = "arn:aws:acm-pca:eu-west-1:111122223333:certificate-authority/11111111-2222-3333-4444-555555555555"

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
		check   func(t *testing.T, c Config)
	}{
		{name: "minimal", cfg: Config{CAArn: caArn}, check: func(t *testing.T, c Config) {
			if c.Region != "eu-west-1" || c.TemplateArn != DefaultTemplateArn || c.Timeout.Duration != 30*time.Second ||
				c.PollInterval.Duration != 200*time.Millisecond || c.RoleSessionName != "meshca-broker" {
				t.Errorf("defaults not applied: %+v", c)
			}
		}},
		{name: "explicit region wins", cfg: Config{CAArn: caArn, Region: "us-east-2"}, check: func(t *testing.T, c Config) {
			if c.Region != "us-east-2" {
				t.Errorf("region %s", c.Region)
			}
		}},
		{name: "missing arn", cfg: Config{}, wantErr: "caArn is required"},
		{name: "not a PCA arn", cfg: Config{CAArn: "arn:aws:iam::111122223333:role/x"}, wantErr: "not a Private CA ARN"},
		{name: "http endpoint off loopback", cfg: Config{CAArn: caArn, Endpoint: "http://pca.example.com"}, wantErr: "loopback"},
		{name: "http loopback endpoint", cfg: Config{CAArn: caArn, Endpoint: "http://127.0.0.1:8080"}},
		{name: "https endpoint", cfg: Config{CAArn: caArn, Endpoint: "https://vpce-1.acm-pca.eu-west-1.vpce.amazonaws.com"}},
		{name: "bad role", cfg: Config{CAArn: caArn, RoleArn: "role"}, wantErr: "roleArn"},
		{name: "unknown signing algorithm", cfg: Config{CAArn: caArn, SigningAlgorithm: "MD5WITHRSA"}, wantErr: "signingAlgorithm"},
		{name: "template without API passthrough", cfg: Config{CAArn: caArn, TemplateArn: "arn:aws:acm-pca:::template/EndEntityCertificate/V1"}, wantErr: "ignores ApiPassthrough"},
		{name: "APICSR passthrough template", cfg: Config{CAArn: caArn, TemplateArn: "arn:aws:acm-pca:::template/BlankEndEntityCertificate_APICSRPassthrough/V1"}},
		{name: "negative timeout", cfg: Config{CAArn: caArn, Timeout: backends.Duration{Duration: -1}}, wantErr: "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.cfg
			err := c.validate()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

func TestDecodeConfigIsStrict(t *testing.T) {
	var c Config
	err := backends.DecodeConfig([]byte(`{"caArn":"x","templateUrn":"y"}`), &c)
	if err == nil || !strings.Contains(err.Error(), "templateUrn") {
		t.Fatalf("err = %v, want the unknown key named", err)
	}
}

func TestSigningAlgorithmFor(t *testing.T) {
	tests := map[types.KeyAlgorithm]types.SigningAlgorithm{
		types.KeyAlgorithmRsa2048:      types.SigningAlgorithmSha256withrsa,
		types.KeyAlgorithmRsa4096:      types.SigningAlgorithmSha256withrsa,
		types.KeyAlgorithmEcPrime256v1: types.SigningAlgorithmSha256withecdsa,
		types.KeyAlgorithmEcSecp384r1:  types.SigningAlgorithmSha384withecdsa,
		types.KeyAlgorithmEcSecp521r1:  types.SigningAlgorithmSha512withecdsa,
		types.KeyAlgorithmMlDsa65:      types.SigningAlgorithmMlDsa65,
		types.KeyAlgorithmSm2:          types.SigningAlgorithmSm3withsm2,
	}
	for k, want := range tests {
		if got, err := signingAlgorithmFor(k); err != nil || got != want {
			t.Errorf("%s: got %s, %v; want %s", k, got, err, want)
		}
	}
	if _, err := signingAlgorithmFor("RSA_1024"); err == nil {
		t.Error("unknown key algorithm accepted")
	}
}

func responseError(status int, err error) error {
	return &smithyhttp.ResponseError{Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status}}, Err: err}
}

func TestClassify(t *testing.T) {
	api := func(code string) error { return &smithy.GenericAPIError{Code: code, Message: "msg " + code} }
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"throttling", responseError(400, api("ThrottlingException")), backends.ErrThrottled},
		{"limit exceeded is a hard quota", responseError(400, &types.LimitExceededException{Message: aws.String("quota")}), backends.ErrRefused},
		{"service quota exceeded", responseError(400, api("ServiceQuotaExceededException")), backends.ErrRefused},
		{"quota exceeded", responseError(400, api("QuotaExceededException")), backends.ErrRefused},
		{"EC2-style request limit is a rate", responseError(400, api("RequestLimitExceeded")), backends.ErrThrottled},
		{"429 unknown code", responseError(429, api("Whatever")), backends.ErrThrottled},
		{"503", responseError(503, api("ServiceUnavailableException")), backends.ErrUnavailable},
		{"500 unknown code", responseError(500, api("Boom")), backends.ErrUnavailable},
		{"internal failure", api("InternalFailure"), backends.ErrUnavailable},
		{"malformed csr", responseError(400, &types.MalformedCSRException{Message: aws.String("bad")}), backends.ErrRefused},
		{"invalid args", responseError(400, &types.InvalidArgsException{Message: aws.String("bad")}), backends.ErrRefused},
		{"invalid state", responseError(400, &types.InvalidStateException{Message: aws.String("disabled")}), backends.ErrRefused},
		{"invalid request", responseError(400, &types.InvalidRequestException{Message: aws.String("x")}), backends.ErrRefused},
		{"request failed", responseError(400, &types.RequestFailedException{Message: aws.String("failed state")}), backends.ErrRefused},
		{"access denied", responseError(400, api("AccessDeniedException")), backends.ErrRefused},
		{"validation", responseError(400, api("ValidationException")), backends.ErrRefused},
		{"connection refused", errors.New("dial tcp 127.0.0.1:1: connect: connection refused"), backends.ErrUnavailable},
		{"bare 403", responseError(403, errors.New("forbidden")), backends.ErrRefused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := classify("issuing", &smithy.OperationError{ServiceID: "ACM PCA", OperationName: "IssueCertificate", Err: tt.err})
			if !errors.Is(err, tt.want) {
				t.Fatalf("classify = %v, want %v", err, tt.want)
			}
			for _, other := range []error{backends.ErrThrottled, backends.ErrUnavailable, backends.ErrRefused} {
				if other != tt.want && errors.Is(err, other) {
					t.Errorf("also %v", other)
				}
			}
			if !strings.Contains(err.Error(), tt.err.Error()) {
				t.Errorf("%q lost the cause %q", err, tt.err)
			}
			if quota := strings.Contains(tt.name, "quota"); quota != strings.Contains(err.Error(), "retrying will not help") {
				t.Errorf("%q: says whether retrying helps wrongly for %s", err, tt.name)
			}
		})
	}
}

func TestSANCriticalHintNamesTheCSR(t *testing.T) {
	refusal := classify("issuing the certificate", &smithy.OperationError{ServiceID: "ACM PCA", OperationName: "IssueCertificate",
		Err: responseError(400, &types.MalformedCSRException{Message: aws.String("CSR must mark the SAN extension critical when it has an empty subject.")})})
	if strings.Contains(refusal.Error(), "workload") {
		t.Errorf("classify blames the workload without knowing the request: %q", refusal)
	}
	workload := template(t)
	serving := &x509.Certificate{DNSNames: []string{"istiod.istio-system.svc", "meshca-broker.istio-system.svc"}}
	tests := []struct {
		name string
		tmpl *x509.Certificate
		want []string
		not  []string
	}{
		{"workload", workload, []string{"spiffe://td/ns/a/sa/b", "ztunnel", "RFC 5280"}, []string{"serving certificate"}},
		{"serving certificate", serving, []string{"broker's own CSR", "istiod.istio-system.svc, meshca-broker.istio-system.svc", "RFC 5280"}, []string{"ztunnel", "workload"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := explainCSRRefusal(refusal, &backends.Request{Template: tt.tmpl})
			if !errors.Is(err, backends.ErrRefused) {
				t.Fatalf("kind lost: %v", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q does not say %q", err, w)
				}
			}
			for _, w := range tt.not {
				if strings.Contains(err.Error(), w) {
					t.Errorf("%q says %q", err, w)
				}
			}
		})
	}
	other := classify("issuing the certificate", responseError(400, &types.InvalidArgsException{Message: aws.String("bad")}))
	if got := explainCSRRefusal(other, &backends.Request{Template: workload}); got != other {
		t.Errorf("another refusal was changed: %v", got)
	}
}

func TestCheckSubject(t *testing.T) {
	der := func(rdns pkix.RDNSequence) []byte {
		b, err := asn1.Marshal(rdns)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	atv := func(oid asn1.ObjectIdentifier, v any) pkix.AttributeTypeAndValue {
		return pkix.AttributeTypeAndValue{Type: oid, Value: v}
	}
	var (
		cn = asn1.ObjectIdentifier{2, 5, 4, 3}
		o  = asn1.ObjectIdentifier{2, 5, 4, 10}
		dc = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 25}
	)
	ia5 := func(s string) asn1.RawValue {
		return asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagIA5String, Bytes: []byte(s)}
	}
	tests := []struct {
		name       string
		csrSubject []byte
		tmplRaw    []byte
		tmplName   pkix.Name
		refuse     []string // words the refusal says; nil: accepted
	}{
		{name: "empty CSR subject", csrSubject: der(nil)},
		{name: "absent CSR subject", csrSubject: nil},
		{name: "Istio agent's O=", csrSubject: der(pkix.RDNSequence{{atv(o, "")}})},
		{name: "CN=admin,O=system:masters", csrSubject: der(pkix.RDNSequence{{atv(o, "system:masters")}, {atv(cn, "admin")}}),
			refuse: []string{`O="system:masters"`, `CN="admin"`, "copy"}},
		{name: "DC, which pkix.Name drops", csrSubject: der(pkix.RDNSequence{{atv(dc, ia5("corp"))}}), refuse: []string{`DC="corp"`}},
		{name: "empty O next to CN in one RDN", csrSubject: der(pkix.RDNSequence{{atv(o, ""), atv(cn, "admin")}}), refuse: []string{`CN="admin"`}},
		{name: "malformed CSR subject", csrSubject: []byte{0x30, 0x03, 0x31, 0x00, 0x00}, refuse: []string{"cannot be read"}},
		{name: "template with only an empty O is empty", csrSubject: der(pkix.RDNSequence{{atv(cn, "admin")}}),
			tmplRaw: der(pkix.RDNSequence{{atv(o, "")}}), refuse: []string{`CN="admin"`}},
		{name: "template subject goes in ApiPassthrough and wins", csrSubject: der(pkix.RDNSequence{{atv(cn, "admin")}}),
			tmplName: pkix.Name{CommonName: "b.a"}},
		{name: "raw template subject", csrSubject: der(pkix.RDNSequence{{atv(cn, "admin")}}),
			tmplRaw: der(pkix.RDNSequence{{atv(cn, "b.a")}})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl := template(t)
			tmpl.RawSubject, tmpl.Subject = tt.tmplRaw, tt.tmplName
			err := checkSubject(&backends.Request{CSR: &x509.CertificateRequest{RawSubject: tt.csrSubject}, Template: tmpl})
			if tt.refuse == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, backends.ErrRefused) {
				t.Fatalf("err = %v, want ErrRefused", err)
			}
			for _, w := range tt.refuse {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q does not say %q", err, w)
				}
			}
		})
	}
}

func template(t *testing.T) *x509.Certificate {
	u, _ := url.Parse("spiffe://td/ns/a/sa/b")
	return &x509.Certificate{
		URIs:        []*url.URL{u},
		DNSNames:    []string{"b.a.svc"},
		NotBefore:   time.Unix(1_700_000_000, 0),
		NotAfter:    time.Unix(1_700_003_600, 0),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
}

func TestPassthrough(t *testing.T) {
	tmpl := template(t)
	pt, err := passthrough(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	sans := pt.Extensions.SubjectAlternativeNames
	if len(sans) != 2 || aws.ToString(sans[0].UniformResourceIdentifier) != "spiffe://td/ns/a/sa/b" || aws.ToString(sans[1].DnsName) != "b.a.svc" {
		t.Errorf("SANs %+v", sans)
	}
	if pt.Subject != nil {
		t.Errorf("empty template subject became %+v", pt.Subject)
	}
	if k := pt.Extensions.KeyUsage; k == nil || !k.DigitalSignature || !k.KeyEncipherment || k.KeyCertSign {
		t.Errorf("KeyUsage %+v", k)
	}
	if e := pt.Extensions.ExtendedKeyUsage; len(e) != 2 || e[0].ExtendedKeyUsageType != types.ExtendedKeyUsageTypeServerAuth {
		t.Errorf("EKU %+v", e)
	}

	tmpl.Subject = pkix.Name{CommonName: "b.a", Organization: []string{"mesh"}}
	pt, err = passthrough(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range pt.Subject.CustomAttributes {
		got = append(got, aws.ToString(a.ObjectIdentifier)+"="+aws.ToString(a.Value))
	}
	if want := "2.5.4.10=mesh,2.5.4.3=b.a"; strings.Join(got, ",") != want {
		t.Errorf("subject attributes %v, want %s", got, want)
	}

	// Empty-valued attributes say nothing and are not sent.
	tmpl.Subject = pkix.Name{Organization: []string{""}}
	if pt, err = passthrough(tmpl); err != nil || pt.Subject != nil {
		t.Errorf("subject O= became %+v, %v; want none", pt.Subject, err)
	}

	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageIPSECUser}
	if _, err := passthrough(tmpl); err == nil {
		t.Error("inexpressible EKU accepted")
	}
}

func TestIdempotencyToken(t *testing.T) {
	in := &acmpca.IssueCertificateInput{CertificateAuthorityArn: aws.String(caArn), TemplateArn: aws.String(DefaultTemplateArn), SigningAlgorithm: types.SigningAlgorithmSha256withecdsa}
	req := &backends.Request{CSR: &x509.CertificateRequest{Raw: []byte("csr-1")}, Template: template(t)}
	base := idempotencyToken(in, req)
	if len(base) != 32 || base != idempotencyToken(in, req) {
		t.Fatalf("token %q is not a stable 32-character string", base)
	}
	variants := map[string]func(){
		"csr":      func() { req.CSR = &x509.CertificateRequest{Raw: []byte("csr-2")} },
		"notAfter": func() { req.Template.NotAfter = req.Template.NotAfter.Add(time.Second) },
		"uri":      func() { req.Template.URIs[0], _ = url.Parse("spiffe://td/ns/a/sa/c") },
		"dns":      func() { req.Template.DNSNames = nil },
		"alg":      func() { in.SigningAlgorithm = types.SigningAlgorithmSha384withecdsa },
	}
	for name, change := range variants {
		t.Run(name, func(t *testing.T) {
			saveIn, saveReq := *in, &backends.Request{CSR: req.CSR, Template: template(t)}
			change()
			if tok := idempotencyToken(in, req); tok == base {
				t.Errorf("token unchanged when %s changes", name)
			}
			*in, req.CSR, req.Template = saveIn, saveReq.CSR, saveReq.Template
		})
	}
}
