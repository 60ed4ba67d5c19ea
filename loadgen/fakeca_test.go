package loadgen

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	authv1 "github.com/meshca/broker/proto/istio/v1/auth"
)

// testCA is a root and an intermediate that issue leaves.
type testCA struct {
	root, inter       *x509.Certificate
	rootKey, interKey crypto.Signer
}

var serialSeq struct {
	sync.Mutex
	n int64
}

func nextSerial() *big.Int {
	serialSeq.Lock()
	defer serialSeq.Unlock()
	serialSeq.n++
	return big.NewInt(serialSeq.n)
}

func mustKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func sign(t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, by crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, by)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	ca := &testCA{rootKey: mustKey(t), interKey: mustKey(t)}
	now := time.Now()
	rootT := &x509.Certificate{SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: name + " root"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	ca.root = sign(t, rootT, rootT, ca.rootKey.Public(), ca.rootKey)
	interT := &x509.Certificate{SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: name + " intermediate"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	ca.inter = sign(t, interT, ca.root, ca.interKey.Public(), ca.rootKey)
	return ca
}

// leaf issues a workload certificate: the given URIs and DNS names for pub.
func (ca *testCA) leaf(t testing.TB, pub crypto.PublicKey, uris []string, dns []string, isCA bool) *x509.Certificate {
	t.Helper()
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: nextSerial(), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames: dns, BasicConstraintsValid: true, IsCA: isCA}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	return sign(t, tmpl, ca.inter, pub, ca.interKey)
}

func (ca *testCA) rootPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.root.Raw})
}

func certPEM(c *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}

// fakeCA is an IstioCertificateService that signs what the CSR asks for,
// with behaviour chosen by the token: "ok", "flaky" (Unavailable on the
// first attempt of each CSR), "deny" (PermissionDenied), "wrong-id" (a
// certificate for another identity), "slow" (sleeps 50ms).
type fakeCA struct {
	authv1.UnimplementedIstioCertificateServiceServer
	t  testing.TB
	ca *testCA

	mu       sync.Mutex
	seen     map[string]bool
	calls    int
	tokens   map[string]int
	clusters map[string]int
	peers    map[string]bool
}

func (f *fakeCA) CreateCertificate(ctx context.Context, req *authv1.IstioCertificateRequest) (*authv1.IstioCertificateResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	token := ""
	if v := md.Get("authorization"); len(v) == 1 {
		token = v[0][len("Bearer "):]
	}
	f.mu.Lock()
	f.calls++
	f.tokens[token]++
	for _, c := range md.Get("clusterid") {
		f.clusters[c]++
	}
	first := !f.seen[req.Csr]
	f.seen[req.Csr] = true
	f.mu.Unlock()

	block, _ := pem.Decode([]byte(req.Csr))
	if block == nil {
		return nil, status.Error(codes.InvalidArgument, "no CSR")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	uris := []string{csr.URIs[0].String()}
	switch token {
	case "deny":
		return nil, status.Error(codes.PermissionDenied, "denied")
	case "flaky":
		if first {
			return nil, status.Error(codes.Unavailable, "try again")
		}
	case "wrong-id":
		uris = []string{"spiffe://cluster.local/ns/other/sa/other"}
	case "slow":
		time.Sleep(50 * time.Millisecond)
	}
	leaf := f.ca.leaf(f.t, csr.PublicKey, uris, nil, false)
	return &authv1.IstioCertificateResponse{CertChain: []string{certPEM(leaf), certPEM(f.ca.inter), certPEM(f.ca.root)}}, nil
}

// startFakeCA serves a fakeCA over TLS on 127.0.0.1 with a certificate for
// istiod.istio-system.svc; it counts the TLS connections accepted.
func startFakeCA(t *testing.T) (*fakeCA, Target, func() int) {
	t.Helper()
	ca := newTestCA(t, "fake")
	servingKey := mustKey(t)
	now := time.Now()
	servingT := &x509.Certificate{SerialNumber: nextSerial(), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		DNSNames: []string{"istiod.istio-system.svc"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	serving := sign(t, servingT, ca.inter, servingKey.Public(), ca.interKey)
	cert := tls.Certificate{Certificate: [][]byte{serving.Raw, ca.inter.Raw}, PrivateKey: servingKey}
	f := &fakeCA{t: t, ca: ca, seen: map[string]bool{}, tokens: map[string]int{}, clusters: map[string]int{}, peers: map[string]bool{}}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	counted := &countingListener{Listener: lis}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})))
	authv1.RegisterIstioCertificateServiceServer(gs, f)
	go gs.Serve(counted)
	t.Cleanup(gs.Stop)
	return f, Target{Name: "fake", Addr: lis.Addr().String(), RootsPEM: ca.rootPEM(), ClusterID: "Kubernetes"}, counted.count
}

type countingListener struct {
	net.Listener
	mu sync.Mutex
	n  int
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.n++
		l.mu.Unlock()
	}
	return c, err
}

func (l *countingListener) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}
