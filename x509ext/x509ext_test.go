package x509ext

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"slices"
	"testing"
)

func TestParseKeyUsage(t *testing.T) {
	cases := []struct {
		name string
		der  []byte
		want x509.KeyUsage
		err  error
	}{
		{"digitalSignature and keyEncipherment", []byte{0x03, 0x02, 0x05, 0xa0}, x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, nil},
		{"keyCertSign and cRLSign", []byte{0x03, 0x02, 0x01, 0x06}, x509.KeyUsageCertSign | x509.KeyUsageCRLSign, nil},
		{"not a BIT STRING", []byte{0x04, 0x01, 0x00}, 0, ErrMalformed},
		{"trailing bytes", []byte{0x03, 0x02, 0x05, 0xa0, 0x00}, 0, ErrMalformed},
		{"an undefined bit", mustBits(t, 11, 10), 0, ErrUndefined},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseKeyUsage(tc.der)
			if !errors.Is(err, tc.err) || got != tc.want {
				t.Fatalf("ParseKeyUsage = %v, %v; want %v, %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func mustBits(t *testing.T, length, set int) []byte {
	t.Helper()
	b := asn1.BitString{Bytes: make([]byte, (length+7)/8), BitLength: length}
	b.Bytes[set/8] |= 0x80 >> uint(set%8)
	der, err := asn1.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestSameKeyUsage(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rs, _ := rsa.GenerateKey(rand.Reader, 2048)
	approved := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	cases := []struct {
		name string
		got  x509.KeyUsage
		pub  any
		want bool
	}{
		{"exactly", approved, rs.Public(), true},
		{"keyEncipherment dropped for ECDSA", x509.KeyUsageDigitalSignature, ec.Public(), true},
		{"keyEncipherment dropped for RSA", x509.KeyUsageDigitalSignature, rs.Public(), false},
		{"an extra usage", approved | x509.KeyUsageCertSign, ec.Public(), false},
		{"none at all is unrestricted", 0, ec.Public(), false},
	}
	for _, tc := range cases {
		if got := SameKeyUsage(tc.got, approved, tc.pub); got != tc.want {
			t.Errorf("%s: SameKeyUsage = %v, want %v", tc.name, got, tc.want)
		}
	}
	if got := KeyUsageNames(approved | x509.KeyUsageCRLSign); !slices.Equal(got, []string{"digitalSignature", "keyEncipherment", "cRLSign"}) {
		t.Errorf("KeyUsageNames = %v", got)
	}
}
