package stepca

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/certificates/errs"
	"go.step.sm/crypto/jose"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/backends/backendtest"
)

// provisionerKey makes an encrypted provisioner key the way `step ca init` does.
func provisionerKey(t testing.TB, password string) (pub *jose.JSONWebKey, encrypted string) {
	t.Helper()
	pub, jwe, err := jose.GenerateDefaultKeyPair([]byte(password))
	if err != nil {
		t.Fatal(err)
	}
	enc, err := jwe.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return pub, enc
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name    string
		json    string
		wantErr string
	}{
		{"minimal", `{"url":"https://ca:9000","rootFile":"r.pem","provisioner":"p","passwordFile":"pw"}`, ""},
		{"unknown key", `{"url":"https://ca:9000","rootFile":"r","provisioner":"p","passwordFile":"pw","kid":"x"}`, `unknown key "kid"`},
		{"http url", `{"url":"http://ca:9000","rootFile":"r","provisioner":"p","passwordFile":"pw"}`, "must be https"},
		{"no url", `{"rootFile":"r","provisioner":"p","passwordFile":"pw"}`, "url is required"},
		{"no root", `{"url":"https://ca","provisioner":"p","passwordFile":"pw"}`, "rootFile is required"},
		{"no provisioner", `{"url":"https://ca","rootFile":"r","passwordFile":"pw"}`, "provisioner is required"},
		{"no password", `{"url":"https://ca","rootFile":"r","provisioner":"p"}`, "exactly one of passwordFile and passwordEnv"},
		{"two passwords", `{"url":"https://ca","rootFile":"r","provisioner":"p","passwordFile":"a","passwordEnv":"B"}`, "exactly one of passwordFile and passwordEnv"},
		{"keyFile without kid", `{"url":"https://ca","rootFile":"r","provisioner":"p","passwordEnv":"B","keyFile":"k"}`, "keyId is required with keyFile"},
		{"bad timeout", `{"url":"https://ca","rootFile":"r","provisioner":"p","passwordEnv":"B","timeout":"soon"}`, "invalid duration"},
		{"long token", `{"url":"https://ca","rootFile":"r","provisioner":"p","passwordEnv":"B","tokenLifetime":"1h"}`, "tokenLifetime"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var cfg Config
			err := backends.DecodeConfig(json.RawMessage(tc.json), &cfg)
			if err == nil {
				err = cfg.setDefaults()
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
			}
			if err == nil && (cfg.Timeout.Duration != defaultTimeout || cfg.TokenLifetime.Duration != defaultTokenLifetime) {
				t.Errorf("defaults not applied: %+v", cfg)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name   string
		err    error
		status int
		want   error
		msg    string
	}{
		{"connection refused", errors.New("client POST https://ca/sign failed: dial tcp: connect: connection refused"), 0, backends.ErrUnavailable, ""},
		{"timeout", fmt.Errorf("client POST failed: %w", context.DeadlineExceeded), 0, backends.ErrUnavailable, ""},
		{"bad request", &errs.Error{Status: 400, Err: errors.New("x"), Msg: "invalid csr"}, 400, backends.ErrRefused, "invalid csr"},
		{"forbidden", &errs.Error{Status: 403, Err: errors.New("certificate request does not contain the valid URIs")}, 403, backends.ErrRefused, "valid URIs"},
		{"unauthorized", &errs.Error{Status: 401, Err: errors.New("The request lacked necessary authorization")}, 401, backends.ErrRefused, "authorization"},
		{"throttled", &errs.Error{Status: 429, Err: errors.New("slow down")}, 429, backends.ErrThrottled, "slow down"},
		{"server error", &errs.Error{Status: 500, Err: errors.New("boom")}, 500, backends.ErrUnavailable, "boom"},
		{"proxy 502 page", errors.New("failed decoding CA error response: invalid character '<'"), 502, backends.ErrUnavailable, "HTTP 502"},
		{"proxy 429 page", errors.New("failed decoding CA error response"), 429, backends.ErrThrottled, "HTTP 429"},
		{"status only in body", &errs.Error{Status: 503, Err: errors.New("sealed")}, 0, backends.ErrUnavailable, "sealed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := classify(tc.err, tc.status)
			if !errors.Is(got, tc.want) {
				t.Fatalf("classify = %v, want kind %v", got, tc.want)
			}
			if !strings.Contains(got.Error(), tc.msg) {
				t.Errorf("classify = %q, want it to contain %q", got, tc.msg)
			}
			for _, other := range []error{backends.ErrUnavailable, backends.ErrThrottled, backends.ErrRefused} {
				if other != tc.want && errors.Is(got, other) {
					t.Errorf("classify = %v is also %v", got, other)
				}
			}
		})
	}
}

func TestTokenClaims(t *testing.T) {
	pub, enc := provisionerKey(t, "pw")
	iss, err := newTokenIssuer("meshca", pub.KeyID, "https://ca:9000/1.0/sign", enc, []byte("pw"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := backendtest.NewRequest(t, "spiffe://cluster.local/ns/default/sa/web", time.Hour)
	req.Template.DNSNames = []string{"web.default.svc"}
	now := time.Now()
	tok, err := iss.token(req.CSR, req.Template, now)
	if err != nil {
		t.Fatal(err)
	}
	jwt, err := jose.ParseSigned(tok)
	if err != nil {
		t.Fatal(err)
	}
	if kid := jwt.Headers[0].KeyID; kid != pub.KeyID {
		t.Errorf("kid header = %q, want %q", kid, pub.KeyID)
	}
	var c tokenClaims
	if err := jwt.Claims(pub, &c); err != nil {
		t.Fatalf("token does not verify with the provisioner's public key: %v", err)
	}
	if c.Issuer != "meshca" || c.Subject != "spiffe://cluster.local/ns/default/sa/web" {
		t.Errorf("iss/sub = %q/%q", c.Issuer, c.Subject)
	}
	if len(c.Audience) != 1 || c.Audience[0] != "https://ca:9000/1.0/sign" {
		t.Errorf("aud = %v", c.Audience)
	}
	if want := []string{"spiffe://cluster.local/ns/default/sa/web", "web.default.svc"}; strings.Join(c.SANs, " ") != strings.Join(want, " ") {
		t.Errorf("sans = %v, want %v", c.SANs, want)
	}
	if got := c.Expiry.Time().Sub(now); got > time.Minute+time.Second || got < time.Minute-time.Second {
		t.Errorf("token lives %v, want 1m", got)
	}
	if c.ID == "" {
		t.Error("no jti: step-ca could not detect replays")
	}
	if c.Cnf == nil || c.Cnf.CSRFingerprint == "" {
		t.Fatal("token is not bound to the CSR")
	}
	if b, _ := base64.RawURLEncoding.DecodeString(c.Cnf.CSRFingerprint); len(b) != 32 {
		t.Errorf("cnf fingerprint %q is not a base64url SHA-256", c.Cnf.CSRFingerprint)
	}

	if _, err := newTokenIssuer("meshca", pub.KeyID, "aud", enc, []byte("wrong"), time.Minute); err == nil {
		t.Error("a wrong password decrypted the key")
	}
	if _, err := newTokenIssuer("meshca", "other-kid", "aud", enc, []byte("pw"), time.Minute); err == nil {
		t.Error("a key whose kid differs from keyId was accepted")
	}
}

func TestChainFromResponseDedupes(t *testing.T) {
	// The chain shape is tested against real step-ca below; here only that
	// repeats collapse and order is kept.
	ca := selfSignedCert(t, "root")
	leaf := selfSignedCert(t, "leaf")
	got := backends.Dedupe([]*x509.Certificate{leaf, ca, leaf, ca})
	if len(got) != 2 || got[0] != leaf || got[1] != ca {
		t.Fatalf("dedupe = %v", got)
	}
}

// TestWireErrors runs the signer against a fake CA answering with what
// step-ca or a proxy in front of it may answer, to check the mapping on
// the real HTTP path (status recorder included).
func TestWireErrors(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		want   error
		msg    string
	}{
		{"refused", 403, `{"status":403,"message":"certificate request does not contain the valid URIs - got [spiffe://a], want [spiffe://b]"}`, backends.ErrRefused, "does not contain the valid URIs"},
		{"throttled", 429, `{"status":429,"message":"Too Many Requests"}`, backends.ErrThrottled, "Too Many Requests"},
		{"server error", 500, `{"status":500,"message":"The certificate authority encountered an Internal Server Error."}`, backends.ErrUnavailable, "Internal Server Error"},
		{"html from a proxy", 502, `<html>Bad Gateway</html>`, backends.ErrUnavailable, "HTTP 502"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/sign" {
					http.NotFound(w, r)
					return
				}
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.body)
			}))
			defer srv.Close()
			s := fakeCASigner(t, srv.URL, srv.Certificate())
			req, _ := backendtest.NewRequest(t, "spiffe://cluster.local/ns/a/sa/b", time.Hour)
			_, err := s.Sign(context.Background(), req)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Sign error = %v, want kind %v containing %q", err, tc.want, tc.msg)
			}
		})
	}

	t.Run("unreachable", func(t *testing.T) {
		srv := httptest.NewTLSServer(http.NotFoundHandler())
		s := fakeCASigner(t, srv.URL, srv.Certificate())
		srv.Close()
		req, _ := backendtest.NewRequest(t, "spiffe://cluster.local/ns/a/sa/b", time.Hour)
		if _, err := s.Sign(context.Background(), req); !errors.Is(err, backends.ErrUnavailable) {
			t.Fatalf("Sign error = %v, want ErrUnavailable", err)
		}
	})

	t.Run("hangs past the timeout", func(t *testing.T) {
		release := make(chan struct{})
		srv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-release }))
		defer srv.Close()
		defer close(release)
		s := fakeCASigner(t, srv.URL, srv.Certificate())
		s.cfg.Timeout.Duration = 300 * time.Millisecond
		req, _ := backendtest.NewRequest(t, "spiffe://cluster.local/ns/a/sa/b", time.Hour)
		start := time.Now()
		_, err := s.Sign(context.Background(), req)
		if !errors.Is(err, backends.ErrUnavailable) {
			t.Fatalf("Sign error = %v, want ErrUnavailable", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("Sign took %v despite a 300ms timeout", d)
		}
	})
}

func fakeCASigner(t *testing.T, caURL string, cert *x509.Certificate) *Signer {
	t.Helper()
	pub, enc := provisionerKey(t, "pw")
	cfg := Config{
		URL:          caURL,
		RootFile:     backendtest.WriteFile(t, "root.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})),
		Provisioner:  "meshca",
		KeyID:        pub.KeyID,
		KeyFile:      backendtest.WriteFile(t, "key.jwe", []byte(enc)),
		PasswordFile: backendtest.WriteFile(t, "pw", []byte("pw\n")),
	}
	s, err := newSigner(context.Background(), cfg, backendtest.QuietLogger())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestNewRejectsBadInputs(t *testing.T) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	rootFile := backendtest.WriteFile(t, "root.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	pub, enc := provisionerKey(t, "pw")
	keyFile := backendtest.WriteFile(t, "key.jwe", []byte(enc))
	base := func() map[string]any {
		return map[string]any{"url": srv.URL, "rootFile": rootFile, "provisioner": "meshca",
			"keyId": pub.KeyID, "keyFile": keyFile, "passwordFile": backendtest.WriteFile(t, "pw", []byte("pw"))}
	}
	tests := []struct {
		name    string
		change  func(m map[string]any)
		wantErr string
	}{
		{"ok", func(map[string]any) {}, ""},
		{"wrong password", func(m map[string]any) { m["passwordFile"] = backendtest.WriteFile(t, "pw2", []byte("nope")) }, "wrong password"},
		{"missing root file", func(m map[string]any) { m["rootFile"] = "/nonexistent/root.pem" }, "reading rootFile"},
		{"root file without certs", func(m map[string]any) { m["rootFile"] = backendtest.WriteFile(t, "x.pem", []byte("hello")) }, "no usable certificates"},
		{"empty password env", func(m map[string]any) { delete(m, "passwordFile"); m["passwordEnv"] = "MESHCA_TEST_UNSET_VAR" }, "password is empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := base()
			tc.change(m)
			raw, _ := json.Marshal(m)
			_, err := backends.New(context.Background(), Type, backends.Options{Config: raw, Logger: backendtest.QuietLogger()})
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestRegistered(t *testing.T) {
	for _, typ := range backends.Types() {
		if typ == "stepca" {
			return
		}
	}
	t.Fatalf("type stepca not registered: %v", backends.Types())
}

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestForgetKeyIfRejected(t *testing.T) {
	iss := &tokenIssuer{kid: "k"}
	for _, tc := range []struct {
		name    string
		keyFile string
		status  int
		forget  bool
	}{
		{"401, key from the CA", "", 401, true},
		{"403, key from the CA", "", 403, false},
		{"401, key from a file", "/k.jwe", 401, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &Signer{cfg: Config{KeyFile: tc.keyFile}, issuer: iss, log: backendtest.QuietLogger()}
			s.forgetKeyIfRejected(iss, fmt.Errorf("x: %w", &caError{status: tc.status}))
			if forgot := s.issuer == nil; forgot != tc.forget {
				t.Errorf("forgot = %v, want %v", forgot, tc.forget)
			}
		})
	}
}
