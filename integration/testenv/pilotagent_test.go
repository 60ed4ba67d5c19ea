//go:build linux

package testenv_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshca/broker/integration/testenv"
)

// rawCodec passes message bytes through, so the fake CA needs no generated code.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

type csrCall struct {
	method   string
	md       metadata.MD
	csr      *x509.CertificateRequest
	validity int64
	meta     *structpb.Struct
}

// fakeCA is a throwaway istio.v1.auth.IstioCertificateService/CreateCertificate
// server: IstioCertificateRequest{csr=1, validity_duration=3, metadata=4} in,
// IstioCertificateResponse{repeated cert_chain=1} out (leaf, root).
type fakeCA struct {
	ca    *testenv.CA
	addr  string
	mu    sync.Mutex
	calls []csrCall
}

func startFakeCA(t *testing.T) *fakeCA {
	f := &fakeCA{ca: testenv.NewCA(t, "fake istio CA")}
	certPEM, keyPEM := f.ca.Issue(t, testenv.LeafOptions{DNSNames: []string{"istiod.istio-system.svc"}, Server: true})
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}})),
		grpc.ForceServerCodec(rawCodec{}),
		grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error { return f.handle(t, stream) }),
	)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = l.Addr().String()
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return f
}

func (f *fakeCA) handle(t *testing.T, stream grpc.ServerStream) error {
	var call csrCall
	call.method, _ = grpc.MethodFromServerStream(stream)
	call.md, _ = metadata.FromIncomingContext(stream.Context())
	var req []byte
	if err := stream.RecvMsg(&req); err != nil {
		return err
	}
	for len(req) > 0 {
		num, typ, n := protowire.ConsumeTag(req)
		if n < 0 {
			return fmt.Errorf("bad request")
		}
		req = req[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			v, m := protowire.ConsumeBytes(req)
			blk, _ := pem.Decode(v)
			if blk == nil {
				return fmt.Errorf("csr is not PEM")
			}
			csr, err := x509.ParseCertificateRequest(blk.Bytes)
			if err != nil {
				return err
			}
			call.csr = csr
			n = m
		case num == 3 && typ == protowire.VarintType:
			v, m := protowire.ConsumeVarint(req)
			call.validity = int64(v)
			n = m
		case num == 4 && typ == protowire.BytesType:
			v, m := protowire.ConsumeBytes(req)
			call.meta = &structpb.Struct{}
			if err := proto.Unmarshal(v, call.meta); err != nil {
				return err
			}
			n = m
		default:
			n = protowire.ConsumeFieldValue(num, typ, req)
		}
		if n < 0 {
			return fmt.Errorf("bad request field %d", num)
		}
		req = req[n:]
	}
	f.mu.Lock()
	f.calls = append(f.calls, call)
	f.mu.Unlock()
	if call.csr == nil {
		return fmt.Errorf("no csr")
	}
	leaf, _ := f.ca.Issue(t, testenv.LeafOptions{PublicKey: call.csr.PublicKey, URIs: call.csr.URIs, TTL: time.Duration(call.validity) * time.Second})
	var resp []byte
	for _, c := range [][]byte{leaf, f.ca.CertPEM} {
		resp = protowire.AppendTag(resp, 1, protowire.BytesType)
		resp = protowire.AppendBytes(resp, c)
	}
	return stream.SendMsg(&resp)
}

func TestPilotAgentGetsCertificate(t *testing.T) {
	t.Parallel()
	for _, ecdsa := range []bool{false, true} {
		t.Run(fmt.Sprintf("ecdsa=%v", ecdsa), func(t *testing.T) {
			f := startFakeCA(t)
			start := time.Now()
			certs, err := testenv.RunPilotAgent(t, testenv.PilotAgentOptions{
				CAAddr:         f.addr,
				Token:          "header.payload.signature",
				RootPEM:        f.ca.CertPEM,
				Namespace:      "apps",
				PodName:        "web-0",
				ServiceAccount: "web",
				ClusterID:      "east",
				SecretTTL:      2 * time.Hour,
				ECDSA:          ecdsa,
				CAHeaders:      map[string]string{"EXTRA": "yes"},
				ExtraEnv:       []string{"ISTIO_META_CERT_SIGNER=my-signer"},
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("certificates after %v", time.Since(start))
			f.mu.Lock()
			defer f.mu.Unlock()
			if len(f.calls) == 0 {
				t.Fatal("no CreateCertificate call")
			}
			c := f.calls[0]
			if c.method != "/istio.v1.auth.IstioCertificateService/CreateCertificate" {
				t.Errorf("method %q", c.method)
			}
			if got := c.md.Get("authorization"); len(got) != 1 || got[0] != "Bearer header.payload.signature" {
				t.Errorf("authorization %v", got)
			}
			if got := c.md.Get("clusterid"); len(got) != 1 || got[0] != "east" {
				t.Errorf("clusterid %v", got)
			}
			if got := c.md.Get("extra"); len(got) != 1 || got[0] != "yes" {
				t.Errorf("CA header extra %v (md %v)", got, c.md)
			}
			if c.validity != 7200 {
				t.Errorf("validity_duration %d", c.validity)
			}
			if len(c.csr.URIs) != 1 || c.csr.URIs[0].String() != "spiffe://cluster.local/ns/apps/sa/web" {
				t.Errorf("csr URIs %v", c.csr.URIs)
			}
			wantAlg := x509.RSA
			if ecdsa {
				wantAlg = x509.ECDSA
			}
			if c.csr.PublicKeyAlgorithm != wantAlg {
				t.Errorf("csr key algorithm %v", c.csr.PublicKeyAlgorithm)
			}
			if got := c.meta.GetFields()["CertSigner"].GetStringValue(); got != "my-signer" {
				t.Errorf("metadata CertSigner %q (struct %v)", got, c.meta)
			}

			chain := testenv.CertChain(certs.CertChainPEM)
			if len(chain) < 1 {
				t.Fatalf("cert-chain.pem: %q", certs.CertChainPEM)
			}
			leaf, err := x509.ParseCertificate(chain[0])
			if err != nil {
				t.Fatal(err)
			}
			if err := leaf.CheckSignatureFrom(f.ca.Cert); err != nil {
				t.Error(err)
			}
			if !strings.Contains(string(certs.RootCertPEM), strings.TrimSpace(string(f.ca.CertPEM))) {
				t.Errorf("root-cert.pem is not the CA root")
			}
			if !strings.Contains(string(certs.KeyPEM), "PRIVATE KEY") {
				t.Errorf("key.pem: %.40q", certs.KeyPEM)
			}
		})
	}
}

func TestPilotAgentRefusedByCA(t *testing.T) {
	t.Parallel()
	// A CA whose certificate is not for istiod.istio-system.svc is refused:
	// the agent writes nothing.
	ca := testenv.NewCA(t, "wrong-name CA")
	certPEM, keyPEM := ca.Issue(t, testenv.LeafOptions{DNSNames: []string{"not-istiod.example"}, Server: true})
	cert, _ := tls.X509KeyPair(certPEM, keyPEM)
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}})))
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(l)
	defer srv.Stop()
	a, err := testenv.StartPilotAgent(t, testenv.PilotAgentOptions{CAAddr: l.Addr().String(), Token: "x", RootPEM: ca.CertPEM})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.WaitForCerts(3 * time.Second); err == nil {
		t.Fatal("agent accepted a CA certificate with the wrong name")
	}
	if a.Connections() == 0 {
		t.Error("agent never connected to the forwarder")
	}
}
