package awspca_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/acmpca"
	"github.com/aws/aws-sdk-go-v2/service/acmpca/types"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/backends/awspca"
	"github.com/meshca/broker/backends/backendtest"
	"github.com/meshca/broker/dn"
	fakepca "github.com/meshca/broker/integration/fakes/awspca"
	"github.com/meshca/broker/verify"
)

// rawClient is the unmodified SDK client pointed at the fake, with no
// retries of its own, for tests of the fake itself.
func rawClient(f *fakepca.Server) *acmpca.Client {
	return acmpca.New(acmpca.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(f.URL),
		Credentials:  credentials.NewStaticCredentialsProvider(fakepca.DefaultAccessKeyID, fakepca.DefaultSecretAccessKey, ""),
		Retryer:      aws.NopRetryer{},
	})
}

// TestHostileSubjects runs the conformance case against the fake, which
// copies the CSR's subject as the real service does ("from API or CSR"):
// the backend refuses every hostile subject before Private CA sees it.
func TestHostileSubjects(t *testing.T) {
	for _, strict := range []bool{false, true} {
		name := map[bool]string{false: "default", true: "StrictEmptySubject"}[strict]
		t.Run(name, func(t *testing.T) {
			f := startFake(t, fakepca.Options{StrictEmptySubject: strict})
			s := newSigner(t, f, nil)
			backendtest.RunHostileSubjects(t, s, spiffeID)
			if n := f.Calls("IssueCertificate"); n != 0 {
				t.Errorf("%d IssueCertificate calls for CSRs the backend must refuse before calling the CA", n)
			}
			// And the Istio agent's own shape still signs.
			req := istioStyleRequest(t)
			chain, err := sign(t, s, req, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			backendtest.CheckIssued(t, s, req, chain)
		})
	}
}

// TestFakeCopiesRawSubject checks the fake (and so the threat): with no
// subject in ApiPassthrough, the leaf's subject is the CSR's raw DER byte
// for byte, attribute types pkix.Name drops included, and the broker's
// verification refuses every such leaf that says something.
func TestFakeCopiesRawSubject(t *testing.T) {
	f := startFake(t, fakepca.Options{StrictEmptySubject: true})
	client := rawClient(f)
	anchors := []*x509.Certificate{f.Root()}
	cases := append(backendtest.HostileSubjects(), backendtest.HostileSubject{Name: "Istio agent's O=", RawSubject: istioStyleRequest(t).CSR.RawSubject})
	for _, h := range cases {
		t.Run(h.Name, func(t *testing.T) {
			req := backendtest.NewRequestWithSubject(t, spiffeID, h.RawSubject, time.Hour)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			out, err := client.IssueCertificate(ctx, &acmpca.IssueCertificateInput{
				CertificateAuthorityArn: aws.String(f.CAArn),
				Csr:                     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: req.CSR.Raw}),
				SigningAlgorithm:        types.SigningAlgorithmSha256withecdsa,
				TemplateArn:             aws.String(awspca.DefaultTemplateArn),
				Validity:                &types.Validity{Type: types.ValidityPeriodTypeAbsolute, Value: aws.Int64(req.Template.NotAfter.Unix())},
				ValidityNotBefore:       &types.Validity{Type: types.ValidityPeriodTypeAbsolute, Value: aws.Int64(req.Template.NotBefore.Unix())},
				ApiPassthrough: &types.ApiPassthrough{Extensions: &types.Extensions{
					SubjectAlternativeNames: []types.GeneralName{{UniformResourceIdentifier: aws.String(spiffeID)}},
				}},
			})
			if err != nil {
				t.Fatal(err)
			}
			got, err := client.GetCertificate(ctx, &acmpca.GetCertificateInput{CertificateArn: out.CertificateArn, CertificateAuthorityArn: aws.String(f.CAArn)})
			if err != nil {
				t.Fatal(err)
			}
			chain, err := backends.ParseCertificates([]byte(aws.ToString(got.Certificate) + "\n" + aws.ToString(got.CertificateChain)))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(chain[0].RawSubject, req.CSR.RawSubject) {
				t.Fatalf("leaf subject %x, CSR subject %x: not copied byte for byte", chain[0].RawSubject, req.CSR.RawSubject)
			}
			valued, _ := dn.Valued(chain[0].RawSubject)
			_, verr := verify.Chain(req, chain, anchors, time.Now())
			switch {
			case len(valued) > 0 && !errors.Is(verr, verify.ErrMismatch):
				t.Errorf("leaf with subject [%s]: verification = %v, want ErrMismatch", dn.Describe(valued), verr)
			case len(valued) == 0 && verr != nil:
				t.Errorf("leaf with an empty-valued subject refused: %v", verr)
			}
		})
	}
}

// TestInjectedSubjectIsCaughtByVerification: a CA that puts a subject of
// its own into the leaf, whatever it was sent, is caught by the broker's
// verification, not by the backend.
func TestInjectedSubjectIsCaughtByVerification(t *testing.T) {
	f := startFake(t, fakepca.Options{StrictEmptySubject: true})
	s := newSigner(t, f, nil)
	anchors, err := s.TrustAnchors(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range backendtest.HostileSubjects() {
		t.Run(h.Name, func(t *testing.T) {
			f.SetInjectSubject(h.RawSubject)
			defer f.SetInjectSubject(nil)
			req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
			chain, err := sign(t, s, req, 5*time.Second)
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			if !bytes.Equal(chain[0].RawSubject, h.RawSubject) {
				t.Fatalf("leaf subject %x, want the injected %x", chain[0].RawSubject, h.RawSubject)
			}
			if _, err := verify.Chain(req, chain, anchors, time.Now()); !errors.Is(err, verify.ErrMismatch) {
				t.Fatalf("verification = %v, want ErrMismatch", err)
			} else {
				t.Logf("caught: %v", err)
			}
		})
	}
	req, _ := backendtest.NewRequest(t, spiffeID, time.Hour)
	chain, err := sign(t, s, req, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	backendtest.CheckIssued(t, s, req, chain) // injection off again
}
