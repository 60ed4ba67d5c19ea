package loadgen

import (
	"crypto"
	"crypto/x509"
	"strings"
	"testing"
	"time"
)

func TestVerifyChain(t *testing.T) {
	ca := newTestCA(t, "ca")
	other := newTestCA(t, "other")
	key := mustKey(t)
	const id = "spiffe://cluster.local/ns/ns-1/sa/sa-1"
	good := ca.leaf(t, key.Public(), []string{id}, nil, false)
	now := time.Now()

	if err := VerifyChain(chainOf(good, ca.inter, ca.root), key.Public(), id, rootsOf(ca), now); err != nil {
		t.Fatalf("good chain refused: %v", err)
	}
	// The root may also be one of several roots in the CA's file.
	if err := VerifyChain(chainOf(good, ca.inter, ca.root), key.Public(), id, append(rootsOf(other), ca.root), now); err != nil {
		t.Fatalf("good chain refused with two roots: %v", err)
	}

	cases := []struct {
		name  string
		chain []*x509.Certificate
		key   crypto.PublicKey
		want  string
	}{
		{"leaf only", chainOf(good), key.Public(), "at least 2"},
		{"another key", chainOf(good, ca.inter, ca.root), mustKey(t).Public(), "workload's key"},
		{"another identity", chainOf(ca.leaf(t, key.Public(), []string{"spiffe://cluster.local/ns/ns-1/sa/sa-2"}, nil, false), ca.inter, ca.root), key.Public(), "want exactly"},
		{"two identities", chainOf(ca.leaf(t, key.Public(), []string{id, "spiffe://cluster.local/ns/x/sa/y"}, nil, false), ca.inter, ca.root), key.Public(), "want exactly"},
		{"extra DNS name", chainOf(ca.leaf(t, key.Public(), []string{id}, []string{"evil.example"}, false), ca.inter, ca.root), key.Public(), "besides"},
		{"a CA", chainOf(ca.leaf(t, key.Public(), []string{id}, nil, true), ca.inter, ca.root), key.Public(), "is a CA"},
		{"last entry not a root", chainOf(good, ca.inter), key.Public(), "not one of the CA's roots"},
		{"another CA's root last", chainOf(good, ca.inter, other.root), key.Public(), "not one of the CA's roots"},
		{"missing intermediate", chainOf(good, ca.root), key.Public(), "does not chain"},
		{"issued by another CA", chainOf(other.leaf(t, key.Public(), []string{id}, nil, false), other.inter, ca.root), key.Public(), "does not chain"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := VerifyChain(c.chain, c.key, id, rootsOf(ca), now)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
	if err := VerifyChain(chainOf(good, ca.inter, ca.root), key.Public(), id, rootsOf(ca), now.Add(2*time.Hour)); err == nil {
		t.Error("expired chain accepted")
	}
}

func TestParseRoots(t *testing.T) {
	a, b := newTestCA(t, "a"), newTestCA(t, "b")
	got, err := ParseRoots(append(append(a.rootPEM(), []byte("junk between\n")...), b.rootPEM()...))
	if err != nil || len(got) != 2 {
		t.Fatalf("got %d roots, %v", len(got), err)
	}
	if _, err := ParseRoots([]byte("no pem")); err == nil {
		t.Error("no error for a file without certificates")
	}
}

func chainOf(cs ...*x509.Certificate) []*x509.Certificate { return cs }

func rootsOf(ca *testCA) []*x509.Certificate { return []*x509.Certificate{ca.root} }
