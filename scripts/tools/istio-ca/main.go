// Command istio-ca runs Istio's own CA server code as a benchmark peer for
// the broker: istiod's CreateCertificate service (security/pkg/server/ca)
// over istiod's self-signed CA (security/pkg/pki/ca, RSA-2048 CA key by
// default), authenticating callers as istiod does (client certificate, then
// the Kubernetes JWT authenticator: one TokenReview per request through a
// client-go clientset with istiod's QPS/burst 80/160). Its TLS certificate
// is issued by that CA for istiod.istio-system.svc, as istiod's is.
//
//	istio-ca --kubeconfig admin.kubeconfig --listen 127.0.0.1:0 --root-cert-file root.pem
//
// It prints "istio-ca listening on HOST:PORT" once serving (the root file is
// written before that line) and stops on SIGTERM or SIGINT.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	meshconfig "istio.io/api/mesh/v1alpha1"
	istiogrpc "istio.io/istio/pilot/pkg/grpc"
	"istio.io/istio/pkg/cluster"
	"istio.io/istio/pkg/config/mesh"
	istiokeepalive "istio.io/istio/pkg/keepalive"
	"istio.io/istio/pkg/security"
	"istio.io/istio/security/pkg/pki/ca"
	caserver "istio.io/istio/security/pkg/server/ca"
	"istio.io/istio/security/pkg/server/ca/authenticate"
	"istio.io/istio/security/pkg/server/ca/authenticate/kubeauth"
)

// fixedMesh is a mesh.Holder with a fixed configuration (istiod watches a ConfigMap).
type fixedMesh struct{ m *meshconfig.MeshConfig }

func (f fixedMesh) Mesh() *meshconfig.MeshConfig { return f.m }

var _ mesh.Holder = fixedMesh{}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "istio-ca:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		kubeconfig  = flag.String("kubeconfig", "", "kubeconfig of the API server that reviews tokens (required)")
		listen      = flag.String("listen", "127.0.0.1:15012", "gRPC over TLS listen address (127.0.0.1:0 picks a free port)")
		rootFile    = flag.String("root-cert-file", "", "write the CA's root certificate (PEM) here")
		trustDomain = flag.String("trust-domain", "cluster.local", "trust domain of issued SPIFFE IDs (and the CA's organization, as istiod)")
		clusterID   = flag.String("cluster-id", "Kubernetes", "this cluster's ID (the clusterid metadata a local caller may send)")
		qps         = flag.Float64("kube-qps", 80, "client-go QPS towards the API server (istiod's default)")
		burst       = flag.Int("kube-burst", 160, "client-go burst towards the API server (istiod's default)")
		keySize     = flag.Int("ca-rsa-key-size", 2048, "RSA key size of the self-signed CA (CITADEL_SELF_SIGNED_CA_RSA_KEY_SIZE)")
		certTTL     = flag.Duration("workload-cert-ttl", 24*time.Hour, "default workload certificate lifetime (DEFAULT_WORKLOAD_CERT_TTL)")
		maxCertTTL  = flag.Duration("max-workload-cert-ttl", 90*24*time.Hour, "maximum workload certificate lifetime (MAX_WORKLOAD_CERT_TTL)")
		caTTL       = flag.Duration("ca-cert-ttl", 10*365*24*time.Hour, "self-signed CA lifetime (CITADEL_SELF_SIGNED_CA_CERT_TTL)")
		dnsNames    = flag.String("dns-names", "istiod.istio-system.svc,istiod.istio-system.svc.cluster.local,istiod.istio-system", "comma-separated names on the serving certificate")
	)
	flag.Parse()
	if *kubeconfig == "" {
		return errors.New("--kubeconfig is required")
	}

	rc, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	rc.QPS, rc.Burst = float32(*qps), *burst
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kube client: %w", err)
	}

	// istiod's self-signed CA (the debug variant keeps the key in memory
	// instead of the istio-ca-secret Secret; the signing path is the same).
	opts, err := ca.NewSelfSignedDebugIstioCAOptions("", *caTTL, *certTTL, *maxCertTTL, *trustDomain, *keySize)
	if err != nil {
		return fmt.Errorf("CA options: %w", err)
	}
	istioCA, err := ca.NewIstioCA(opts)
	if err != nil {
		return fmt.Errorf("CA: %w", err)
	}
	rootPEM := istioCA.GetCAKeyCertBundle().GetRootCertPem()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		return errors.New("CA root is not PEM")
	}

	// istiod's own serving certificate, issued by its CA.
	certPEM, keyPEM, err := istioCA.GenKeyCert(strings.Split(*dnsNames, ","), 24*time.Hour, false)
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	servingCert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}

	m := mesh.DefaultMeshConfig()
	m.TrustDomain = *trustDomain
	authenticators := []security.Authenticator{
		&authenticate.ClientCertAuthenticator{},
		kubeauth.NewKubeJWTAuthenticator(fixedMesh{m}, client, cluster.ID(*clusterID), nil, nil),
	}
	srv, err := caserver.New(istioCA, *maxCertTTL, authenticators, nil)
	if err != nil {
		return fmt.Errorf("CA server: %w", err)
	}

	// istiod's secure gRPC server (initSecureDiscoveryService): optional client
	// certificates, TLS 1.2 minimum, istiod's gRPC server options.
	tlsConfig := &tls.Config{
		Certificates: []tls.Certificate{servingCert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    roots,
		MinVersion:   tls.VersionTLS12,
	}
	gopts := istiogrpc.ServerOptions(istiokeepalive.DefaultOption(), func(int64) {})
	gopts = append(gopts, grpc.Creds(credentials.NewTLS(tlsConfig)))
	gs := grpc.NewServer(gopts...)
	srv.Register(gs)

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	if *rootFile != "" {
		if err := os.WriteFile(*rootFile, rootPEM, 0o644); err != nil {
			return err
		}
	}
	fmt.Printf("istio-ca listening on %s (trust domain %s, cluster %s, kube QPS/burst %v/%d, CA RSA-%d)\n",
		lis.Addr(), *trustDomain, *clusterID, *qps, *burst, *keySize)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	done := make(chan struct{})
	go func() { gs.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		gs.Stop()
	}
	return nil
}
