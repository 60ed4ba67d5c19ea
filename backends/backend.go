// Package backends defines what every certificate authority the broker can
// use must do (the Signer interface), the errors a backend reports so the
// server can pick the right gRPC code, and the registry that builds a signer
// from its type name in the configuration.
package backends

import (
	"context"
	"crypto/x509"
	"errors"
)

// Request is a signing request that policy has already approved. Backends
// must issue exactly what Template says (names, lifetime, usages) for the
// public key in CSR, and nothing the CSR asks for beyond that: the CSR is
// passed along only because some PKIs insist on receiving one.
type Request struct {
	// CSR is the caller's parsed, signature-checked request. CSR.Raw holds
	// its DER encoding.
	CSR *x509.CertificateRequest
	// Template holds the decided certificate: Subject, URIs, DNSNames,
	// NotBefore, NotAfter, KeyUsage, ExtKeyUsage. SerialNumber, keys and
	// issuer fields are the backend's business.
	Template *x509.Certificate
}

// Signer is a certificate authority backend.
type Signer interface {
	// Sign issues a certificate for req and returns the chain as the
	// backend has it, leaf first. The chain may or may not include the
	// root and may repeat certificates; the broker normalises and verifies
	// it before anything reaches a workload.
	Sign(ctx context.Context, req *Request) ([]*x509.Certificate, error)
	// TrustAnchors returns the root certificates the issued chains must
	// verify to. They come from configuration or from the backend over an
	// authenticated channel, never trusted on first use silently.
	TrustAnchors(ctx context.Context) ([]*x509.Certificate, error)
}

// Errors a backend wraps (fmt.Errorf("...: %w: %w", backends.ErrRefused,
// err)) so that the server can map them to gRPC codes the Istio agent
// understands: it retries Unavailable and ResourceExhausted.
var (
	// ErrUnavailable: the backend could not be reached or answered with a
	// transient server error. Maps to codes.Unavailable.
	ErrUnavailable = errors.New("certificate authority unavailable")
	// ErrThrottled: the backend asked us to slow down. Maps to
	// codes.ResourceExhausted.
	ErrThrottled = errors.New("certificate authority throttled the request")
	// ErrRefused: the backend understood the request and refused it (role
	// or template does not allow it, CSR rejected). Maps to
	// codes.FailedPrecondition with the PKI's reason.
	ErrRefused = errors.New("certificate authority refused the request")
)

// Retryable reports whether err is worth another attempt.
func Retryable(err error) bool {
	return errors.Is(err, ErrUnavailable) || errors.Is(err, ErrThrottled)
}
