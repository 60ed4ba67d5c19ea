package gcpcas

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/dn"
	"github.com/meshca/broker/x509ext"
)

// What CA Service takes from a pem_csr: the subject (unless the pool's
// identity constraints deny subject passthrough), the subjectAltName
// extension (unless they deny SAN passthrough), and every other requested
// extension the pool's passthrough_extensions allow; a pool without
// passthrough_extensions restricts none. So the CSR may travel as it is only
// when everything in it that CA Service could copy is exactly what was
// approved. Everything below judges the DER, never crypto/x509's parsed
// view of it, which drops attribute types (emailAddress, DC, UID...),
// GeneralName kinds (otherName, directoryName, registeredID...) and any
// extensionRequest value after the first.

var (
	oidExtensionRequest = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 14}
	oidSubjectAltName   = asn1.ObjectIdentifier{2, 5, 29, 17}
)

// GeneralName tags (RFC 5280, 4.2.1.6) of the names the broker approves.
const (
	sanEmail = 1
	sanDNS   = 2
	sanURI   = 6
	sanIP    = 7
)

// csrMismatch returns nil when the CSR asks for exactly what the template
// approves, so that CA Service copying the CSR issues the approved
// certificate; otherwise it says what differs. The rules:
//
//   - the CSR's raw subject is byte-equal to the approved subject's DER (the
//     Istio agent's "O=" is not: it goes as config, which is correct);
//   - the CSR has no attribute but one extensionRequest, with one value,
//     holding no extension but subjectAltName (no key usage, basic
//     constraints or anything else the pool could pass through);
//   - that subjectAltName holds exactly the approved names, byte for byte,
//     and no other kind of GeneralName.
func csrMismatch(req *backends.Request) error {
	csr, t := req.CSR, req.Template
	want, err := dn.Of(t)
	if err != nil {
		return fmt.Errorf("approved subject does not encode: %v", err)
	}
	if !bytes.Equal(csr.RawSubject, want) {
		return subjectDiffers(csr.RawSubject, want)
	}
	exts, err := requestedExtensions(csr.RawTBSCertificateRequest)
	if err != nil {
		return err
	}
	approvedNames := templateNames(t)
	var san *pkix.Extension
	for i := range exts {
		if !exts[i].Id.Equal(oidSubjectAltName) {
			return fmt.Errorf("CSR requests extension %s, which CA Service may copy", x509ext.ExtensionName(exts[i].Id))
		}
		if san != nil {
			return errors.New("CSR requests subjectAltName twice")
		}
		san = &exts[i]
	}
	if san == nil {
		if len(approvedNames) == 0 {
			return nil
		}
		return errors.New("CSR has no subjectAltName")
	}
	got, err := generalNames(san.Value)
	if err != nil {
		return err
	}
	slices.SortFunc(got, compareNames)
	slices.SortFunc(approvedNames, compareNames)
	if !slices.EqualFunc(got, approvedNames, func(a, b generalName) bool { return compareNames(a, b) == 0 }) {
		return fmt.Errorf("CSR subjectAltName names %s, approved %s", describeNames(got), describeNames(approvedNames))
	}
	return nil
}

func subjectDiffers(got, want []byte) error {
	if attrs, err := dn.Parse(got); err != nil {
		return fmt.Errorf("CSR subject: %v", err)
	} else if wantAttrs, _ := dn.Parse(want); len(attrs) > 0 || len(wantAttrs) > 0 {
		return fmt.Errorf("CSR subject [%s] is not byte-equal to the approved [%s]", dn.Describe(attrs), dn.Describe(wantAttrs))
	}
	return errors.New("CSR subject is not byte-equal to the approved one")
}

// requestedExtensions reads the CSR's attributes from the DER of its
// CertificationRequestInfo (RFC 2986): at most one attribute, an
// extensionRequest with exactly one value, is accepted; its extensions are
// returned.
func requestedExtensions(tbs []byte) ([]pkix.Extension, error) {
	var info struct {
		Version    int
		Subject    asn1.RawValue
		PublicKey  asn1.RawValue
		Attributes []asn1.RawValue `asn1:"tag:0"`
	}
	rest, err := asn1.Unmarshal(tbs, &info)
	if err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("CSR's CertificationRequestInfo does not parse strictly (%v)", err)
	}
	switch len(info.Attributes) {
	case 0:
		return nil, nil
	case 1:
	default:
		return nil, fmt.Errorf("CSR carries %d attributes; only one extensionRequest goes as pem_csr", len(info.Attributes))
	}
	var attr struct {
		Type   asn1.ObjectIdentifier
		Values []asn1.RawValue `asn1:"set"`
	}
	if rest, err := asn1.Unmarshal(info.Attributes[0].FullBytes, &attr); err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("CSR attribute does not parse strictly (%v)", err)
	}
	if !attr.Type.Equal(oidExtensionRequest) {
		return nil, fmt.Errorf("CSR carries attribute %s", attr.Type)
	}
	if len(attr.Values) != 1 {
		return nil, fmt.Errorf("CSR extensionRequest has %d values", len(attr.Values))
	}
	var exts []pkix.Extension
	if rest, err := asn1.Unmarshal(attr.Values[0].FullBytes, &exts); err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("CSR extensionRequest does not parse strictly (%v)", err)
	}
	return exts, nil
}

// generalName is one GeneralName: its context tag and content octets.
type generalName struct {
	tag   int
	value []byte
}

func compareNames(a, b generalName) int {
	if a.tag != b.tag {
		return a.tag - b.tag
	}
	return bytes.Compare(a.value, b.value)
}

// generalNames reads a subjectAltName value: a SEQUENCE OF GeneralName of
// the four kinds the broker approves, nothing else, nothing after it.
func generalNames(der []byte) ([]generalName, error) {
	var seq asn1.RawValue
	rest, err := asn1.Unmarshal(der, &seq)
	if err != nil || len(rest) != 0 || seq.Class != asn1.ClassUniversal || seq.Tag != asn1.TagSequence || !seq.IsCompound {
		return nil, errors.New("CSR subjectAltName is not a well-formed SEQUENCE OF GeneralName")
	}
	var out []generalName
	for b := seq.Bytes; len(b) > 0; {
		var gn asn1.RawValue
		if b, err = asn1.Unmarshal(b, &gn); err != nil {
			return nil, fmt.Errorf("CSR subjectAltName: %v", err)
		}
		if gn.Class != asn1.ClassContextSpecific || gn.IsCompound {
			return nil, fmt.Errorf("CSR subjectAltName holds a %s", kindName(gn))
		}
		switch gn.Tag {
		case sanEmail, sanDNS, sanURI, sanIP:
			out = append(out, generalName{gn.Tag, gn.Bytes})
		default:
			return nil, fmt.Errorf("CSR subjectAltName holds a %s", kindName(gn))
		}
	}
	return out, nil
}

// templateNames are the approved names as x509.CreateCertificate encodes
// them.
func templateNames(t *x509.Certificate) []generalName {
	var out []generalName
	for _, d := range t.DNSNames {
		out = append(out, generalName{sanDNS, []byte(d)})
	}
	for _, e := range t.EmailAddresses {
		out = append(out, generalName{sanEmail, []byte(e)})
	}
	for _, ip := range t.IPAddresses {
		if v4 := ip.To4(); v4 != nil {
			ip = v4
		}
		out = append(out, generalName{sanIP, []byte(ip)})
	}
	for _, u := range t.URIs {
		out = append(out, generalName{sanURI, []byte(u.String())})
	}
	return out
}

var generalNameKinds = map[int]string{
	0: "otherName", 1: "rfc822Name", 2: "dNSName", 3: "x400Address", 4: "directoryName",
	5: "ediPartyName", 6: "uniformResourceIdentifier", 7: "iPAddress", 8: "registeredID",
}

func kindName(gn asn1.RawValue) string {
	if k, ok := generalNameKinds[gn.Tag]; ok && gn.Class == asn1.ClassContextSpecific {
		return k
	}
	return "GeneralName with class " + strconv.Itoa(gn.Class) + " tag " + strconv.Itoa(gn.Tag)
}

func describeNames(names []generalName) string {
	var b bytes.Buffer
	b.WriteByte('[')
	for i, n := range names {
		if i > 0 {
			b.WriteString(" ")
		}
		b.WriteString(generalNameKinds[n.tag])
		b.WriteByte(':')
		b.WriteString(strconv.Quote(string(n.value)))
	}
	b.WriteByte(']')
	return b.String()
}
