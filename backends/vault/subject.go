package vault

import (
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/dn"
	"github.com/meshca/broker/x509ext"
)

// What Vault takes from a CSR, and what the backend does about it.
//
// sign-verbatim (certutil's UseCSRValues) copies the CSR's subject (every
// attribute Go parses, re-encoded, one per RDN), its SANs, and every CSR
// extension except basicConstraints verbatim into the certificate; a key
// usage or extended key usage extension in the CSR wins over the key_usage
// and ext_key_usage the broker sends, and the role's restrictions
// (allowed_uri_sans, allowed_domains...) are not applied. So in that mode
// the CSR itself must say exactly what was approved: checkVerbatim refuses
// anything else before Vault sees it.
//
// sign takes from the CSR only what the role lets it: the CN
// (use_csr_common_name), the SANs (use_csr_sans, checked against the role),
// a serialNumber attribute (allowed_serial_numbers) and UID attributes
// (allowed_user_ids); O, OU, C, L, ST, street and postalCode come from the
// role's own fields. checkIssuedSubject names the role field when Vault's
// answer carries a subject anyway.

var (
	oidExtSubjectAltName   = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidExtKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtExtKeyUsage      = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidExtBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
)

// extKeyUsageOIDs are the extended key usages a template may approve.
var extKeyUsageOIDs = map[x509.ExtKeyUsage]asn1.ObjectIdentifier{
	x509.ExtKeyUsageAny:             {2, 5, 29, 37, 0},
	x509.ExtKeyUsageServerAuth:      {1, 3, 6, 1, 5, 5, 7, 3, 1},
	x509.ExtKeyUsageClientAuth:      {1, 3, 6, 1, 5, 5, 7, 3, 2},
	x509.ExtKeyUsageCodeSigning:     {1, 3, 6, 1, 5, 5, 7, 3, 3},
	x509.ExtKeyUsageEmailProtection: {1, 3, 6, 1, 5, 5, 7, 3, 4},
	x509.ExtKeyUsageTimeStamping:    {1, 3, 6, 1, 5, 5, 7, 3, 8},
	x509.ExtKeyUsageOCSPSigning:     {1, 3, 6, 1, 5, 5, 7, 3, 9},
}

// checkVerbatim refuses (backends.ErrRefused, naming each difference) a
// request that sign-verbatim would turn into a certificate other than the
// approved one: a CSR subject with any valued attribute the template does
// not have, SANs other than the approved names (or of a kind Go does not
// parse), a key usage or extended key usage other than the approved one,
// a CA request, or any other extension.
func checkVerbatim(req *backends.Request) error {
	csr, tmpl := req.CSR, req.Template
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	approved, err := dn.Of(tmpl)
	if err != nil {
		return err
	}
	if same, err := dn.SameValues(csr.RawSubject, approved); err != nil {
		add("subject: %v", err)
	} else if !same {
		got, _ := dn.Valued(csr.RawSubject)
		want, _ := dn.Valued(approved)
		add("subject [%s] (approved [%s])", dn.Describe(got), dn.Describe(want))
	}

	seen := map[string]bool{}
	sawSAN := false
	for _, ext := range csr.Extensions {
		id := ext.Id.String()
		if seen[id] {
			add("extension %s twice", x509ext.ExtensionName(ext.Id))
			continue
		}
		seen[id] = true
		switch {
		case ext.Id.Equal(oidExtSubjectAltName):
			sawSAN = true
			got, err := sanList(ext.Value)
			if err != nil {
				add("subjectAltName: %v", err)
			} else if want := templateSANs(tmpl); !slices.Equal(got, want) {
				add("subjectAltName %v (approved %v)", got, want)
			}
		case ext.Id.Equal(oidExtKeyUsage):
			got, err := x509ext.ParseKeyUsage(ext.Value)
			if err != nil {
				add("key usage: %v", err)
			} else if !x509ext.SameKeyUsage(got, tmpl.KeyUsage, csr.PublicKey) {
				add("key usage %s (approved %s)", keyUsageList(got), keyUsageList(tmpl.KeyUsage))
			}
		case ext.Id.Equal(oidExtExtKeyUsage):
			var oids []asn1.ObjectIdentifier
			if rest, err := asn1.Unmarshal(ext.Value, &oids); err != nil || len(rest) != 0 {
				add("extended key usage: malformed")
				break
			}
			got, want := oidStrings(oids), templateEKUs(tmpl)
			if !slices.Equal(got, want) {
				add("extended key usage %v (approved %v)", got, want)
			}
		case ext.Id.Equal(oidExtBasicConstraints):
			// Vault leaves it out of the certificate; a CA request is
			// still refused rather than silently downgraded.
			var bc struct {
				IsCA       bool `asn1:"optional"`
				MaxPathLen int  `asn1:"optional,default:-1"`
			}
			if rest, err := asn1.Unmarshal(ext.Value, &bc); err != nil || len(rest) != 0 {
				add("basicConstraints: malformed")
			} else if bc.IsCA {
				add("basicConstraints CA:true")
			}
		default:
			add("extension %s", x509ext.ExtensionName(ext.Id))
		}
	}
	if want := templateSANs(tmpl); !sawSAN && len(want) > 0 {
		add("no subjectAltName (approved %v)", want)
	}
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("%w: sign-verbatim copies the CSR into the certificate, and this CSR carries %s; refused before asking Vault",
		backends.ErrRefused, strings.Join(problems, "; "))
}

// checkIssuedSubject refuses Vault's answer when the leaf's subject is not
// the approved one, naming the role setting that put it there, so that an
// operator does not have to guess from the broker's verification error.
func checkIssuedSubject(leaf *x509.Certificate, tmpl *x509.Certificate, mode string) error {
	approved, err := dn.Of(tmpl)
	if err != nil {
		return err
	}
	same, err := dn.SameValues(leaf.RawSubject, approved)
	if err == nil && same {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: Vault issued a certificate with a malformed subject: %v; nothing returned", backends.ErrRefused, err)
	}
	got, _ := dn.Valued(leaf.RawSubject)
	var causes []string
	for _, a := range got {
		c := roleFieldFor(a.Type, mode)
		if !slices.Contains(causes, c) {
			causes = append(causes, c)
		}
	}
	want, _ := dn.Valued(approved)
	return fmt.Errorf("%w: Vault issued subject [%s], approved [%s] (%s); nothing returned",
		backends.ErrRefused, dn.Describe(got), dn.Describe(want), strings.Join(causes, "; "))
}

// roleFieldFor says where a subject attribute in Vault's answer comes from.
func roleFieldFor(typ asn1.ObjectIdentifier, mode string) string {
	name := dn.TypeName(typ)
	if mode == modeSignVerbatim {
		return name + ": sign-verbatim copied it from the CSR"
	}
	switch name {
	case "CN":
		return "CN: the role has use_csr_common_name=true (set it to false)"
	case "serialNumber":
		return "serialNumber: the role's allowed_serial_numbers lets the CSR's through (leave it empty)"
	case "UID":
		return "UID: the role's allowed_user_ids lets the CSR's through (leave it empty)"
	case "O":
		return "O: the role's organization (leave it empty)"
	case "OU":
		return "OU: the role's ou (leave it empty)"
	case "C":
		return "C: the role's country (leave it empty)"
	case "L":
		return "L: the role's locality (leave it empty)"
	case "ST":
		return "ST: the role's province (leave it empty)"
	case "street":
		return "street: the role's street_address (leave it empty)"
	case "postalCode":
		return "postalCode: the role's postal_code (leave it empty)"
	}
	return name + ": not a field of the role"
}

// SAN GeneralName tags (RFC 5280 4.2.1.6) a certificate of ours may carry.
const (
	sanEmail = 1
	sanDNS   = 2
	sanURI   = 6
	sanIP    = 7
)

// sanList reads a raw subjectAltName extension value into sorted
// "KIND:value" strings, refusing kinds crypto/x509 does not parse (and
// verification therefore would not see).
func sanList(der []byte) ([]string, error) {
	var names []asn1.RawValue
	if rest, err := asn1.Unmarshal(der, &names); err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("malformed")
	}
	var out []string
	for _, n := range names {
		if n.Class != asn1.ClassContextSpecific {
			return nil, fmt.Errorf("malformed")
		}
		switch n.Tag {
		case sanEmail:
			out = append(out, "email:"+string(n.Bytes))
		case sanDNS:
			out = append(out, "DNS:"+string(n.Bytes))
		case sanURI:
			out = append(out, "URI:"+string(n.Bytes))
		case sanIP:
			if len(n.Bytes) != net.IPv4len && len(n.Bytes) != net.IPv6len {
				return nil, fmt.Errorf("malformed IP address")
			}
			out = append(out, "IP:"+net.IP(n.Bytes).String())
		default:
			return nil, fmt.Errorf("a name of kind %d (otherName, directoryName, registeredID...)", n.Tag)
		}
	}
	slices.Sort(out)
	return out, nil
}

func templateSANs(tmpl *x509.Certificate) []string {
	var out []string
	for _, e := range tmpl.EmailAddresses {
		out = append(out, "email:"+e)
	}
	for _, d := range tmpl.DNSNames {
		out = append(out, "DNS:"+d)
	}
	for _, u := range tmpl.URIs {
		out = append(out, "URI:"+u.String())
	}
	for _, ip := range tmpl.IPAddresses {
		out = append(out, "IP:"+ip.String())
	}
	slices.Sort(out)
	return out
}

// keyUsageList names key usages for a message, as Vault's key_usage does.
func keyUsageList(ku x509.KeyUsage) []string {
	if out := keyUsageNames(ku); len(out) > 0 {
		return out
	}
	return []string{"none"}
}

func templateEKUs(tmpl *x509.Certificate) []string {
	var oids []asn1.ObjectIdentifier
	for _, e := range tmpl.ExtKeyUsage {
		if oid, ok := extKeyUsageOIDs[e]; ok {
			oids = append(oids, oid)
		} else {
			oids = append(oids, asn1.ObjectIdentifier{0, int(e)}) // never matches a CSR
		}
	}
	oids = append(oids, tmpl.UnknownExtKeyUsage...)
	return oidStrings(oids)
}

// oidStrings names OIDs (Vault's names where it has one), sorted and
// without repeats.
func oidStrings(oids []asn1.ObjectIdentifier) []string {
	var out []string
	for _, oid := range oids {
		name := oid.String()
		for e, o := range extKeyUsageOIDs {
			if o.Equal(oid) {
				name = extKeyUsages[e]
			}
		}
		out = append(out, name)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
