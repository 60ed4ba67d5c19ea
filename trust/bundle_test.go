package trust

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func root(t *testing.T, name string) *x509.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// source is a settable source.
type source struct {
	mu    sync.Mutex
	certs []*x509.Certificate
	err   error
	calls int
}

func (s *source) get(context.Context) ([]*x509.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	return s.certs, s.err
}

func (s *source) set(certs []*x509.Certificate, err error) {
	s.mu.Lock()
	s.certs, s.err = certs, err
	s.mu.Unlock()
}

func TestBundleIsBackendPlusExtraOnceEach(t *testing.T) {
	oldRoot, newRoot := root(t, "old"), root(t, "new")
	backend, extra := &source{certs: []*x509.Certificate{oldRoot}}, &source{certs: []*x509.Certificate{newRoot, oldRoot}}
	b, err := LoadBundle(context.Background(), BundleConfig{Backend: backend.get, Extra: extra.get})
	if err != nil {
		t.Fatal(err)
	}
	s := b.Current()
	if len(s.Roots) != 2 || !s.Roots[0].Equal(oldRoot) || !s.Roots[1].Equal(newRoot) {
		t.Fatalf("roots %v, want old then new, once each", s.Roots)
	}
	if n := strings.Count(string(s.PEM), "BEGIN CERTIFICATE"); n != 2 {
		t.Fatalf("PEM holds %d certificates, want 2", n)
	}
}

func TestBundleKeepsLastGoodSetAndTellsSubscribersOfChanges(t *testing.T) {
	r1, r2 := root(t, "one"), root(t, "two")
	backend := &source{certs: []*x509.Certificate{r1}}
	b, err := LoadBundle(context.Background(), BundleConfig{Backend: backend.get, Refresh: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	changed := b.Subscribe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	// An outage keeps the last good set, and is no change.
	backend.set(nil, errors.New("backend down"))
	time.Sleep(50 * time.Millisecond)
	if s := b.Current(); len(s.Roots) != 1 || !s.Roots[0].Equal(r1) || s.Generation != 1 {
		t.Fatalf("during an outage: %v generation %d", s.Roots, s.Generation)
	}
	select {
	case <-changed:
		t.Fatal("an outage was reported as a change")
	default:
	}
	// A new root is a change; a poke picks it up before the interval.
	backend.set([]*x509.Certificate{r2}, nil)
	b.RefreshSoon()
	select {
	case <-changed:
	case <-time.After(15 * time.Second):
		t.Fatal("no change reported")
	}
	if s := b.Current(); !s.Roots[0].Equal(r2) || s.Generation != 2 {
		t.Fatalf("after the change: %v generation %d", s.Roots, s.Generation)
	}
}

func TestBundleFailsClosedWithoutAnySet(t *testing.T) {
	for name, src := range map[string]Source{
		"error": func(context.Context) ([]*x509.Certificate, error) { return nil, errors.New("down") },
		"empty": func(context.Context) ([]*x509.Certificate, error) { return nil, nil },
	} {
		b := NewBundle(BundleConfig{Backend: src})
		if err := b.Load(context.Background()); err == nil {
			t.Errorf("%s: no error", name)
		}
		if _, err := b.Get(context.Background()); err == nil {
			t.Errorf("%s: Get before a successful load returned no error", name)
		}
	}
}

func TestFileSource(t *testing.T) {
	dir := t.TempDir()
	r1, r2 := root(t, "one"), root(t, "two")
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pemOf := func(cs ...*x509.Certificate) []byte { return encode(cs) }
	cases := []struct {
		name string
		path string
		want int
		err  string
	}{
		{"two roots", write("two.pem", pemOf(r1, r2)), 2, ""},
		{"an empty file is no roots", write("empty.pem", []byte("\n  \n")), 0, ""},
		{"missing", filepath.Join(dir, "missing.pem"), 0, "no such file"},
		{"junk after the roots", write("junk.pem", append(pemOf(r1), "junk"...)), 0, "not PEM"},
		{"a key", write("key.pem", []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")), 0, "PRIVATE KEY"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FileSource(tc.path)(context.Background())
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want it to mention %q", err, tc.err)
				}
				return
			}
			if err != nil || len(got) != tc.want {
				t.Fatalf("got %d roots, %v; want %d", len(got), err, tc.want)
			}
		})
	}
}
