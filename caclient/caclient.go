// Package caclient talks to an Istio CA the way the Istio agent does: a
// fresh key, a CSR naming the workload's SPIFFE ID, CreateCertificate over
// TLS with the service-account token and cluster ID as metadata. The demo,
// `broker check`, load generators and tests use it.
package caclient

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"net/url"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshca/broker/csrgen"
	authv1 "github.com/meshca/broker/proto/istio/v1/auth"
)

// DefaultServerName is the name the Istio agent checks on its CA's
// certificate when the CA address says localhost.
const DefaultServerName = "istiod.istio-system.svc"

// Client is a connection to a CA.
type Client struct {
	conn *grpc.ClientConn
	rpc  authv1.IstioCertificateServiceClient
}

// Dial connects over TLS, verifying the server against roots under
// serverName. clientCert, if not nil, is presented (certificate renewal).
func Dial(addr string, roots *x509.CertPool, serverName string, clientCert *tls.Certificate) (*Client, error) {
	if serverName == "" {
		serverName = DefaultServerName
	}
	tc := &tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12}
	if clientCert != nil {
		tc.Certificates = []tls.Certificate{*clientCert}
	}
	return DialTLS(addr, tc)
}

// DialTLS connects with a TLS configuration of the caller's.
func DialTLS(addr string, tc *tls.Config) (*Client, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", addr, err)
	}
	return &Client{conn: conn, rpc: authv1.NewIstioCertificateServiceClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Request is one certificate request.
type Request struct {
	// Key is the workload key; Key.Public() goes into the CSR.
	Key crypto.Signer
	// SPIFFEID is put in the CSR (the agent always names its own ID).
	SPIFFEID string
	// Token is sent as "authorization: Bearer <token>" if not empty.
	Token string
	// ClusterID is sent as "clusterid" if not empty.
	ClusterID string
	// TTL is validity_duration.
	TTL time.Duration
	// CSRPEM overrides the generated CSR (for hostile-input tests).
	CSRPEM string
	// Impersonate asks for another workload's certificate, as ztunnel
	// does for the pods on its node (ImpersonatedIdentity metadata).
	Impersonate string
}

// Issued is what came back.
type Issued struct {
	ChainPEM []string
	Chain    []*x509.Certificate
}

// NewKey makes a key the way the agent does: RSA-2048 by default, ECDSA
// P-256 with ECC_SIGNATURE_ALGORITHM=ECDSA.
func NewKey(ecdsaKey bool) (crypto.Signer, error) {
	if ecdsaKey {
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	return rsa.GenerateKey(rand.Reader, 2048)
}

// CSR builds a PEM CSR for key naming spiffeID as the Istio agent does:
// an empty subject and the ID in a critical subjectAltName.
func CSR(key crypto.Signer, spiffeID string) (string, error) {
	var names csrgen.Names
	if spiffeID != "" {
		u, err := url.Parse(spiffeID)
		if err != nil {
			return "", err
		}
		names.URIs = []*url.URL{u}
	}
	return csrgen.PEM(key, names)
}

// CreateCertificate sends one request.
func (c *Client) CreateCertificate(ctx context.Context, r Request) (*Issued, error) {
	csr := r.CSRPEM
	if csr == "" {
		if r.Key == nil {
			return nil, errors.New("caclient: no key and no CSR")
		}
		var err error
		if csr, err = CSR(r.Key, r.SPIFFEID); err != nil {
			return nil, fmt.Errorf("caclient: building CSR: %w", err)
		}
	}
	var md []string
	if r.Token != "" {
		md = append(md, "authorization", "Bearer "+r.Token)
	}
	if r.ClusterID != "" {
		md = append(md, "clusterid", r.ClusterID)
	}
	ctx = metadata.AppendToOutgoingContext(ctx, md...)
	// The agent's metadata; ztunnel's instead names the workload it asks
	// for and no signer.
	fields := map[string]any{"CertSigner": ""}
	if r.Impersonate != "" {
		fields = map[string]any{"ImpersonatedIdentity": r.Impersonate}
	}
	meta, _ := structpb.NewStruct(fields)
	resp, err := c.rpc.CreateCertificate(ctx, &authv1.IstioCertificateRequest{
		Csr:              csr,
		ValidityDuration: int64(r.TTL / time.Second),
		Metadata:         meta,
	})
	if err != nil {
		return nil, err
	}
	out := &Issued{ChainPEM: resp.GetCertChain()}
	for i, p := range out.ChainPEM {
		block, rest := pem.Decode([]byte(p))
		if block == nil || len(rest) != 0 {
			return out, fmt.Errorf("caclient: chain entry %d is not exactly one PEM block", i)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return out, fmt.Errorf("caclient: chain entry %d: %w", i, err)
		}
		out.Chain = append(out.Chain, cert)
	}
	return out, nil
}

// Retry is a retry schedule for CreateCertificate: up to Max retries after
// the first attempt, waiting Initial, then twice as long each time, with
// Jitter (a fraction) either way.
type Retry struct {
	Max     int
	Initial time.Duration
	Jitter  float64
}

// AgentRetry is the Istio agent's schedule: five retries, exponential
// backoff from 100ms with 10% jitter.
var AgentRetry = Retry{Max: 5, Initial: 100 * time.Millisecond, Jitter: 0.1}

// retryCodes are the codes the Istio agent retries.
var retryCodes = map[codes.Code]bool{
	codes.Unavailable: true, codes.Internal: true, codes.Canceled: true,
	codes.DeadlineExceeded: true, codes.ResourceExhausted: true, codes.Aborted: true,
}

// CreateCertificateRetrying sends r, retrying the same CSR on the codes
// the Istio agent retries, on schedule rt. It returns the attempts made.
func (c *Client) CreateCertificateRetrying(ctx context.Context, r Request, rt Retry) (*Issued, int, error) {
	if r.CSRPEM == "" {
		if r.Key == nil {
			return nil, 0, errors.New("caclient: no key and no CSR")
		}
		var err error
		if r.CSRPEM, err = CSR(r.Key, r.SPIFFEID); err != nil {
			return nil, 0, fmt.Errorf("caclient: building CSR: %w", err)
		}
	}
	wait := rt.Initial
	for attempt := 1; ; attempt++ {
		out, err := c.CreateCertificate(ctx, r)
		if err == nil || attempt > rt.Max || !retryCodes[status.Code(err)] {
			return out, attempt, err
		}
		d := time.Duration(float64(wait) * (1 + rt.Jitter*(2*mathrand.Float64()-1)))
		select {
		case <-ctx.Done():
			return nil, attempt, err
		case <-time.After(d):
		}
		wait *= 2
	}
}
