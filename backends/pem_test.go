package backends

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"
)

func TestParseCertificates(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	cert := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	keyDER, _ := x509.MarshalECPrivateKey(key)
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	cases := []struct {
		name, in string
		n        int
		mention  string
	}{
		{"one", cert, 1, ""},
		{"two with a duplicate", cert + "\n" + cert, 2, ""},
		{"empty", "", 0, "no PEM certificate"},
		{"a private key", cert + keyPEM, 0, "EC PRIVATE KEY"},
		{"trailing garbage", cert + "garbage", 0, "trailing data"},
		{"bad DER", "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n", 0, "x509"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseCertificates([]byte(tc.in))
			if tc.mention != "" {
				if err == nil || !strings.Contains(err.Error(), tc.mention) {
					t.Fatalf("err = %v, want it to mention %q", err, tc.mention)
				}
				return
			}
			if err != nil || len(got) != tc.n {
				t.Fatalf("got %d, %v", len(got), err)
			}
			if d := Dedupe(got); len(d) != 1 {
				t.Fatalf("Dedupe kept %d", len(d))
			}
		})
	}
}
