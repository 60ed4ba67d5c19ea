package awspca_test

import (
	"context"
	"encoding/pem"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/acmpca"
	"github.com/aws/aws-sdk-go-v2/service/acmpca/types"

	"github.com/meshca/broker/backends/backendtest"
	fakepca "github.com/meshca/broker/integration/fakes/awspca"
)

// BenchmarkSign compares the backend's Sign with the bare SDK calls a
// minimal client would make (IssueCertificate, then GetCertificate until
// issued) against the same fake, so the ratio of the two is the backend's
// own overhead: passthrough building, token hashing, chain parsing.
//
//	go test -run x -bench . ./backends/awspca/
func BenchmarkSign(b *testing.B) {
	f := startFake(b, fakepca.Options{})
	req, _ := backendtest.NewRequest(b, spiffeID, time.Hour)
	notAfter := req.Template.NotAfter
	// Distinct per call across every run of the benchmark, so that no
	// call is an idempotent replay of an earlier one.
	var seq int64

	b.Run("broker", func(b *testing.B) {
		s := newSigner(b, f, nil)
		ctx := context.Background()
		b.ResetTimer()
		for b.Loop() {
			// A distinct NotAfter per iteration, so the idempotency token
			// does not turn iterations into replays.
			seq++
			req.Template.NotAfter = notAfter.Add(time.Duration(seq) * time.Second)
			if _, err := s.Sign(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("raw-sdk", func(b *testing.B) {
		client := acmpca.New(acmpca.Options{
			Region:       "us-east-1",
			BaseEndpoint: aws.String(f.URL),
			Credentials:  credentials.NewStaticCredentialsProvider(fakepca.DefaultAccessKeyID, fakepca.DefaultSecretAccessKey, ""),
		})
		ctx := context.Background()
		csr := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: req.CSR.Raw})
		b.ResetTimer()
		for b.Loop() {
			seq++
			out, err := client.IssueCertificate(ctx, &acmpca.IssueCertificateInput{
				CertificateAuthorityArn: aws.String(f.CAArn),
				Csr:                     csr,
				SigningAlgorithm:        types.SigningAlgorithmSha256withecdsa,
				TemplateArn:             aws.String("arn:aws:acm-pca:::template/EndEntityCertificate_APIPassthrough/V1"),
				Validity:                &types.Validity{Type: types.ValidityPeriodTypeAbsolute, Value: aws.Int64(notAfter.Unix() + seq)},
				ApiPassthrough: &types.ApiPassthrough{Extensions: &types.Extensions{SubjectAlternativeNames: []types.GeneralName{
					{UniformResourceIdentifier: aws.String(spiffeID)},
				}}},
			})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := client.GetCertificate(ctx, &acmpca.GetCertificateInput{CertificateArn: out.CertificateArn, CertificateAuthorityArn: aws.String(f.CAArn)}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
