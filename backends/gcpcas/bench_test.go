package gcpcas_test

import (
	"context"
	"encoding/pem"
	"testing"
	"time"

	privateca "cloud.google.com/go/security/privateca/apiv1"
	"cloud.google.com/go/security/privateca/apiv1/privatecapb"
	"github.com/google/uuid"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshca/broker/backends/backendtest"
	fakecas "github.com/meshca/broker/integration/fakes/gcpcas"
)

// BenchmarkSign compares the backend's Sign with the one bare
// CreateCertificate call a minimal client would make against the same
// fake, so the ratio is the backend's own overhead: IDs derived by
// hashing, chain parsing, retry bookkeeping.
//
//	go test -run x -bench . ./backends/gcpcas/
func BenchmarkSign(b *testing.B) {
	f := startFake(b, fakecas.Options{})
	req, _ := backendtest.NewRequest(b, spiffeID, time.Hour)
	notAfter := req.Template.NotAfter
	// Distinct per call across every run of the benchmark, so that no
	// call is an idempotent replay of an earlier one.
	var seq int64

	b.Run("broker", func(b *testing.B) {
		s := newSigner(b, f, nil)
		ctx := context.Background()
		for b.Loop() {
			// A distinct NotAfter per iteration: otherwise the derived
			// request ID would make iterations replays.
			seq++
			req.Template.NotAfter = notAfter.Add(time.Duration(seq) * time.Second)
			if _, err := s.Sign(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("raw-sdk", func(b *testing.B) {
		ctx := context.Background()
		client, err := privateca.NewCertificateAuthorityClient(ctx, option.WithEndpoint(f.Addr), option.WithoutAuthentication(),
			option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
		if err != nil {
			b.Fatal(err)
		}
		defer client.Close()
		csr := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: req.CSR.Raw}))
		for b.Loop() {
			_, err := client.CreateCertificate(ctx, &privatecapb.CreateCertificateRequest{
				Parent:        f.PoolName,
				CertificateId: "raw-" + uuid.NewString(),
				RequestId:     uuid.NewString(),
				Certificate: &privatecapb.Certificate{
					CertificateConfig: &privatecapb.Certificate_PemCsr{PemCsr: csr},
					Lifetime:          durationpb.New(time.Hour),
				},
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}
