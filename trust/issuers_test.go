package trust

import (
	"crypto/x509"
	"path/filepath"
	"testing"
)

func TestIssuersAreLearnedAndKeptAcrossRestarts(t *testing.T) {
	file := filepath.Join(t.TempDir(), "issuers.pem")
	a, b, configured := root(t, "issuing 1"), root(t, "issuing 2"), root(t, "configured")
	s, err := NewIssuers(nil, file)
	if err != nil {
		t.Fatal(err)
	}
	s.Learn(a)
	s.Learn(a)
	if !s.Contains(a) || s.Contains(b) || len(s.List()) != 1 {
		t.Fatalf("after learning one issuer: %d issuers", len(s.List()))
	}
	restarted, err := NewIssuers([]*x509.Certificate{configured}, file)
	if err != nil {
		t.Fatal(err)
	}
	if !restarted.Contains(a) || !restarted.Contains(configured) || restarted.Contains(b) {
		t.Fatal("a restart lost the learned issuer or the configured one")
	}
}
