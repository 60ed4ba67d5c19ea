// Package dn reads raw X.509 distinguished names (a certificate's or CSR's
// subject) attribute by attribute: every RDN and every attribute type, in
// any string encoding, whatever crypto/x509's parsed pkix.Name keeps. The
// broker uses it to refuse a CSR whose subject says anything, to check that
// a PKI issued exactly the approved subject, and to decide, before a PKI
// sees a CSR, whether the PKI would copy anything from it.
package dn

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Attribute is one AttributeTypeAndValue of a distinguished name.
type Attribute struct {
	Type asn1.ObjectIdentifier
	// Tag and Class are the value's ASN.1 tag (UTF8String, PrintableString,
	// IA5String, a SEQUENCE...); Value is its content octets.
	Class, Tag int
	Value      []byte
	// RDN is the index of the relative distinguished name holding it; two
	// attributes with the same RDN form a multi-valued RDN.
	RDN int
}

// ErrMalformed means the bytes are not a DER RDNSequence.
var ErrMalformed = errors.New("malformed distinguished name")

// Parse returns every attribute of a DER-encoded Name (an RDNSequence), in
// order. An empty sequence gives no attributes.
func Parse(raw []byte) ([]Attribute, error) {
	if len(raw) == 0 {
		// A missing subject is an empty one (some encoders omit it).
		return nil, nil
	}
	var seq asn1.RawValue
	rest, err := asn1.Unmarshal(raw, &seq)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the name", ErrMalformed, len(rest))
	}
	if seq.Class != asn1.ClassUniversal || seq.Tag != asn1.TagSequence || !seq.IsCompound {
		return nil, fmt.Errorf("%w: not a SEQUENCE of RDNs", ErrMalformed)
	}
	var out []Attribute
	for i, rdns := 0, seq.Bytes; len(rdns) > 0; i++ {
		var set asn1.RawValue
		if rdns, err = asn1.Unmarshal(rdns, &set); err != nil {
			return nil, fmt.Errorf("%w: RDN %d: %v", ErrMalformed, i, err)
		}
		if set.Class != asn1.ClassUniversal || set.Tag != asn1.TagSet || !set.IsCompound {
			return nil, fmt.Errorf("%w: RDN %d is not a SET", ErrMalformed, i)
		}
		if len(set.Bytes) == 0 {
			// X.501: SET SIZE (1..MAX); an empty RDN is malformed.
			return nil, fmt.Errorf("%w: RDN %d is empty", ErrMalformed, i)
		}
		for atvs := set.Bytes; len(atvs) > 0; {
			var atv asn1.RawValue
			if atvs, err = asn1.Unmarshal(atvs, &atv); err != nil {
				return nil, fmt.Errorf("%w: RDN %d: %v", ErrMalformed, i, err)
			}
			if atv.Class != asn1.ClassUniversal || atv.Tag != asn1.TagSequence || !atv.IsCompound {
				return nil, fmt.Errorf("%w: RDN %d holds something other than an attribute", ErrMalformed, i)
			}
			var typ asn1.ObjectIdentifier
			afterType, err := asn1.Unmarshal(atv.Bytes, &typ)
			if err != nil {
				return nil, fmt.Errorf("%w: RDN %d: attribute type: %v", ErrMalformed, i, err)
			}
			var val asn1.RawValue
			afterValue, err := asn1.Unmarshal(afterType, &val)
			if err != nil {
				return nil, fmt.Errorf("%w: RDN %d: attribute %s: value: %v", ErrMalformed, i, typ, err)
			}
			if len(afterValue) != 0 {
				return nil, fmt.Errorf("%w: RDN %d: attribute %s has data after its value", ErrMalformed, i, typ)
			}
			out = append(out, Attribute{Type: typ, Class: val.Class, Tag: val.Tag, Value: val.Bytes, RDN: i})
		}
	}
	return out, nil
}

// Of is a certificate template's subject as DER: its RawSubject when set
// (crypto/x509 issues that verbatim), else its Subject encoded.
func Of(t *x509.Certificate) ([]byte, error) {
	if len(t.RawSubject) > 0 {
		return t.RawSubject, nil
	}
	b, err := asn1.Marshal(t.Subject.ToRDNSequence())
	if err != nil {
		return nil, fmt.Errorf("subject does not encode: %w", err)
	}
	return b, nil
}

// Valued returns the attributes of raw whose value is not empty: the ones
// that say something. The Istio agent's CSRs carry an empty O attribute,
// which says nothing and is not returned.
func Valued(raw []byte) ([]Attribute, error) {
	attrs, err := Parse(raw)
	if err != nil {
		return nil, err
	}
	out := attrs[:0:0]
	for _, a := range attrs {
		if len(a.Value) > 0 {
			out = append(out, a)
		}
	}
	return out, nil
}

// Empty reports whether raw says nothing: no attribute with a value.
func Empty(raw []byte) (bool, error) {
	v, err := Valued(raw)
	return len(v) == 0, err
}

// SameValues reports whether a and b carry the same valued attributes in
// the same order (type and content; a PKI may re-encode a PrintableString
// as a UTF8String, so string tags are not compared). Empty-valued
// attributes are ignored on both sides. A malformed name is never the same.
func SameValues(a, b []byte) (bool, error) {
	va, err := Valued(a)
	if err != nil {
		return false, err
	}
	vb, err := Valued(b)
	if err != nil {
		return false, err
	}
	if len(va) != len(vb) {
		return false, nil
	}
	for i := range va {
		x, y := va[i], vb[i]
		if !x.Type.Equal(y.Type) || !bytes.Equal(x.Value, y.Value) || isString(x) != isString(y) {
			return false, nil
		}
		if !isString(x) && (x.Class != y.Class || x.Tag != y.Tag) {
			return false, nil
		}
	}
	return true, nil
}

// Describe renders attributes for a message: short names where there are
// ones, values quoted and cut short.
func Describe(attrs []Attribute) string {
	var b bytes.Buffer
	for i, a := range attrs {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(a.String())
	}
	return b.String()
}

// String is the attribute as NAME="value" (or OID=#hex for a value that is
// not text).
func (a Attribute) String() string {
	name := TypeName(a.Type)
	if isString(a) && utf8.Valid(a.Value) {
		v := string(a.Value)
		if len(v) > 64 {
			v = v[:64] + "..."
		}
		return name + "=" + strconv.Quote(v)
	}
	v := a.Value
	if len(v) > 32 {
		v = v[:32]
	}
	return fmt.Sprintf("%s=#%x (ASN.1 tag %d)", name, v, a.Tag)
}

var typeNames = map[string]string{
	"2.5.4.3":                    "CN",
	"2.5.4.4":                    "SN",
	"2.5.4.5":                    "serialNumber",
	"2.5.4.6":                    "C",
	"2.5.4.7":                    "L",
	"2.5.4.8":                    "ST",
	"2.5.4.9":                    "street",
	"2.5.4.10":                   "O",
	"2.5.4.11":                   "OU",
	"2.5.4.12":                   "title",
	"2.5.4.17":                   "postalCode",
	"2.5.4.42":                   "GN",
	"2.5.4.46":                   "dnQualifier",
	"2.5.4.65":                   "pseudonym",
	"1.2.840.113549.1.9.1":       "emailAddress",
	"0.9.2342.19200300.100.1.1":  "UID",
	"0.9.2342.19200300.100.1.25": "DC",
}

// TypeName is the usual short name of an attribute type, or its dotted OID.
func TypeName(oid asn1.ObjectIdentifier) string {
	s := oid.String()
	if n, ok := typeNames[s]; ok {
		return n
	}
	return s
}

// String tags X.520 names use: UTF8String, NumericString, PrintableString,
// T61String, IA5String, UniversalString, BMPString (and VisibleString).
func isString(a Attribute) bool {
	if a.Class != asn1.ClassUniversal {
		return false
	}
	switch a.Tag {
	case asn1.TagUTF8String, asn1.TagNumericString, asn1.TagPrintableString, asn1.TagT61String,
		asn1.TagIA5String, 26 /* VisibleString */, 28 /* UniversalString */, asn1.TagBMPString:
		return true
	}
	return false
}
