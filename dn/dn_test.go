package dn

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"testing"
)

var (
	oidCN = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidO  = asn1.ObjectIdentifier{2, 5, 4, 10}
	oidDC = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 25}
)

func der(t *testing.T, rdns pkix.RDNSequence) []byte {
	t.Helper()
	b, err := asn1.Marshal(rdns)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func str(tag int, s string) asn1.RawValue {
	return asn1.RawValue{Class: asn1.ClassUniversal, Tag: tag, Bytes: []byte(s)}
}

func TestValued(t *testing.T) {
	cases := []struct {
		name string
		raw  func(t *testing.T) []byte
		want string // Describe of the valued attributes
		err  bool
	}{
		{"nothing at all", func(*testing.T) []byte { return nil }, "", false},
		{"empty sequence", func(t *testing.T) []byte { return der(t, pkix.RDNSequence{}) }, "", false},
		{"empty O", func(t *testing.T) []byte { return der(t, pkix.RDNSequence{{{Type: oidO, Value: ""}}}) }, "", false},
		{"CN and O in order", func(t *testing.T) []byte {
			return der(t, pkix.RDNSequence{{{Type: oidO, Value: "system:masters"}}, {{Type: oidCN, Value: "admin"}}})
		}, `O="system:masters", CN="admin"`, false},
		{"multi-valued RDN", func(t *testing.T) []byte {
			return der(t, pkix.RDNSequence{{{Type: oidO, Value: ""}, {Type: oidDC, Value: str(asn1.TagIA5String, "corp")}}})
		}, `DC="corp"`, false},
		{"a value that is not text", func(t *testing.T) []byte {
			return der(t, pkix.RDNSequence{{{Type: oidCN, Value: 7}}})
		}, "CN=#07 (ASN.1 tag 2)", false},
		{"not a sequence", func(*testing.T) []byte { return []byte{0x31, 0x00} }, "", true},
		{"trailing bytes", func(t *testing.T) []byte { return append(der(t, pkix.RDNSequence{}), 0) }, "", true},
		{"empty RDN", func(*testing.T) []byte { return []byte{0x30, 0x02, 0x31, 0x00} }, "", true},
		{"RDN that is a SEQUENCE", func(*testing.T) []byte { return []byte{0x30, 0x02, 0x30, 0x00} }, "", true},
		{"attribute without a value", func(*testing.T) []byte {
			return []byte{0x30, 0x09, 0x31, 0x07, 0x30, 0x05, 0x06, 0x03, 0x55, 0x04, 0x03}
		}, "", true},
		{"attribute with two values", func(*testing.T) []byte {
			return []byte{0x30, 0x0d, 0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x00, 0x0c, 0x00}
		}, "", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Valued(tc.raw(t))
			if tc.err {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("err = %v, want ErrMalformed", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := Describe(got); d != tc.want {
				t.Fatalf("Describe = %q, want %q", d, tc.want)
			}
		})
	}
}

func TestSameValues(t *testing.T) {
	empty := der(t, pkix.RDNSequence{})
	emptyO := der(t, pkix.RDNSequence{{{Type: oidO, Value: ""}}})
	cnUTF8 := der(t, pkix.RDNSequence{{{Type: oidCN, Value: str(asn1.TagUTF8String, "x")}}})
	cnPrintable := der(t, pkix.RDNSequence{{{Type: oidCN, Value: str(asn1.TagPrintableString, "x")}}})
	cnOther := der(t, pkix.RDNSequence{{{Type: oidCN, Value: "y"}}})
	dc := der(t, pkix.RDNSequence{{{Type: oidDC, Value: str(asn1.TagIA5String, "x")}}})
	cases := []struct {
		name string
		a, b []byte
		want bool
	}{
		{"empty and missing", empty, nil, true},
		{"empty and empty-valued O", empty, emptyO, true},
		{"a string re-encoded", cnUTF8, cnPrintable, true},
		{"another value", cnUTF8, cnOther, false},
		{"another type, same value", cnUTF8, dc, false},
		{"something and nothing", cnUTF8, empty, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, pair := range [][2][]byte{{tc.a, tc.b}, {tc.b, tc.a}} {
				got, err := SameValues(pair[0], pair[1])
				if err != nil || got != tc.want {
					t.Fatalf("SameValues = %v, %v; want %v", got, err, tc.want)
				}
			}
		})
	}
}
