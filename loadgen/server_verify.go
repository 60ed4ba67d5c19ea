package loadgen

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"
)

// serverCheck verifies the CA's serving certificate as the Istio agent
// does (a chain to the roots, for ServerName), once per distinct
// certificate. Thousands of simulated pods share this process and these
// CPUs with the CA under test, while real pods check on their own nodes:
// repeating the same chain verification for every connection would take
// CPU from the CA and say nothing new. The TLS handshake still proves on
// every connection that the server holds the certificate's key.
type serverCheck struct {
	roots      *x509.CertPool
	serverName string

	mu       sync.Mutex
	verified map[string]time.Time // leaf DER -> when its chain expires
}

func newServerCheck(roots *x509.CertPool, serverName string) *serverCheck {
	return &serverCheck{roots: roots, serverName: serverName, verified: map[string]time.Time{}}
}

// tlsConfig verifies with check instead of Go's per-connection
// verification, which InsecureSkipVerify turns off and nothing else.
func (c *serverCheck) tlsConfig() *tls.Config {
	return &tls.Config{
		ServerName:         c.serverName,
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true,
		VerifyConnection:   c.check,
	}
}

func (c *serverCheck) check(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the CA presented no certificate")
	}
	leaf, now := cs.PeerCertificates[0], time.Now()
	c.mu.Lock()
	until, ok := c.verified[string(leaf.Raw)]
	c.mu.Unlock()
	if ok && now.Before(until) {
		return nil
	}
	inter := x509.NewCertPool()
	for _, ic := range cs.PeerCertificates[1:] {
		inter.AddCert(ic)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: c.roots, Intermediates: inter, DNSName: c.serverName, CurrentTime: now})
	if err != nil {
		return fmt.Errorf("the CA's certificate: %w", err)
	}
	until = leaf.NotAfter
	for _, ch := range chains[0] {
		until = minTime(until, ch.NotAfter)
	}
	c.mu.Lock()
	if len(c.verified) > 64 { // a rotating CA: keep it small
		clear(c.verified)
	}
	c.verified[string(leaf.Raw)] = until
	c.mu.Unlock()
	return nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
