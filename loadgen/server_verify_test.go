package loadgen

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"
)

func TestServerCheckVerifiesEachCertificateItHasNotSeen(t *testing.T) {
	ca, other := newTestCA(t, "mesh"), newTestCA(t, "other")
	serving := func(ca *testCA, name string, valid time.Duration) []*x509.Certificate {
		tmpl := &x509.Certificate{
			SerialNumber: nextSerial(), DNSNames: []string{name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(valid),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
		}
		return []*x509.Certificate{sign(t, tmpl, ca.inter, mustKey(t).Public(), ca.interKey), ca.inter}
	}
	good := serving(ca, "istiod.istio-system.svc", time.Hour)

	pool := x509.NewCertPool()
	pool.AddCert(ca.root)
	c := newServerCheck(pool, "istiod.istio-system.svc")
	for _, tc := range []struct {
		name  string
		chain []*x509.Certificate
		ok    bool
	}{
		{"good", good, true},
		{"good again, from the memo", good, true},
		{"another name", serving(ca, "evil.example", time.Hour), false},
		{"another root", serving(other, "istiod.istio-system.svc", time.Hour), false},
		{"expired", serving(ca, "istiod.istio-system.svc", -time.Minute), false},
		{"without its intermediate", good[:1], true}, // the same leaf: already verified
		{"no certificate", nil, false},
	} {
		if err := c.check(tls.ConnectionState{PeerCertificates: tc.chain}); (err == nil) != tc.ok {
			t.Errorf("%s: err %v, want ok %v", tc.name, err, tc.ok)
		}
	}
	if len(c.verified) != 1 {
		t.Errorf("memo holds %d certificates, want only the good one", len(c.verified))
	}
}
