package vault

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/backends/backendtest"
)

func TestConfigValidation(t *testing.T) {
	tok := `"auth":{"method":"token","token":{"tokenFile":"/t"}}`
	tests := []struct {
		name    string
		json    string
		wantErr string
		check   func(*testing.T, Config)
	}{
		{"defaults", `{"address":"https://vault:8200","role":"istio",` + tok + `}`, "", func(t *testing.T, c Config) {
			if c.Mount != "pki" || c.Mode != "sign" || c.Timeout.Duration != 10*time.Second || c.signPath() != "pki/sign/istio" {
				t.Errorf("defaults: %+v path %s", c, c.signPath())
			}
		}},
		{"sign-verbatim path", `{"address":"https://vault:8200","mount":"/pki_int/","role":"istio","mode":"sign-verbatim",` + tok + `}`, "", func(t *testing.T, c Config) {
			if c.signPath() != "pki_int/sign-verbatim/istio" {
				t.Errorf("path = %s", c.signPath())
			}
		}},
		{"http to loopback (Vault Agent)", `{"address":"http://127.0.0.1:8100","role":"r",` + tok + `}`, "", nil},
		{"unix socket", `{"address":"unix:///run/vault.sock","role":"r",` + tok + `}`, "", nil},
		{"unknown key", `{"address":"https://v","role":"r","rol":"x",` + tok + `}`, `unknown key "rol"`, nil},
		{"http to a remote host", `{"address":"http://vault.example:8200","role":"r",` + tok + `}`, "plain http is only accepted to a loopback", nil},
		{"tls options with http", `{"address":"http://127.0.0.1:8200","caBundle":"/ca","role":"r",` + tok + `}`, "need an https address", nil},
		{"no address", `{"role":"r",` + tok + `}`, "address is required", nil},
		{"no role", `{"address":"https://v",` + tok + `}`, "role is required", nil},
		{"bad mode", `{"address":"https://v","role":"r","mode":"issue",` + tok + `}`, `mode "issue"`, nil},
		{"cert without key", `{"address":"https://v","role":"r","clientCert":"/c",` + tok + `}`, "clientCert and clientKey", nil},
		{"bad timeout", `{"address":"https://v","role":"r","timeout":"5",` + tok + `}`, "missing unit", nil},
		{"no auth", `{"address":"https://v","role":"r"}`, "auth.method is required", nil},
		{"unknown method", `{"address":"https://v","role":"r","auth":{"method":"userpass"}}`, `auth.method "userpass"`, nil},
		{"section of another method", `{"address":"https://v","role":"r","auth":{"method":"token","token":{"token":"x"},"appRole":{"roleId":"a","secretId":"b"}}}`, "auth.appRole is set but auth.method is", nil},
		{"two token sources", `{"address":"https://v","role":"r","auth":{"method":"token","token":{"token":"x","tokenEnv":"T"}}}`, "exactly one of token, tokenFile, tokenEnv", nil},
		{"approle without secret", `{"address":"https://v","role":"r","auth":{"method":"approle","appRole":{"roleId":"a"}}}`, "exactly one of secretId", nil},
		{"approle defaults", `{"address":"https://v","role":"r","auth":{"method":"approle","appRole":{"roleId":"a","secretIdFile":"/s"}}}`, "", func(t *testing.T, c Config) {
			if c.Auth.AppRole.MountPath != "approle" {
				t.Errorf("mountPath = %q", c.Auth.AppRole.MountPath)
			}
		}},
		{"kubernetes without role", `{"address":"https://v","role":"r","auth":{"method":"kubernetes","kubernetes":{}}}`, "auth.kubernetes.role is required", nil},
		{"kubernetes defaults", `{"address":"https://v","role":"r","auth":{"method":"kubernetes","kubernetes":{"role":"meshca"}}}`, "", func(t *testing.T, c Config) {
			k := c.Auth.Kubernetes
			if k.MountPath != "kubernetes" || k.TokenFile != "/var/run/secrets/kubernetes.io/serviceaccount/token" {
				t.Errorf("kubernetes defaults: %+v", k)
			}
		}},
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
			if err == nil && tc.check != nil {
				tc.check(t, cfg)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	re := func(code int, msgs ...string) error {
		return fmt.Errorf("wrapped by the auth library: %w", &vaultapi.ResponseError{StatusCode: code, Errors: msgs})
	}
	tests := []struct {
		name string
		err  error
		want error
		msg  string
	}{
		{"role refuses", re(400, "URI Subject Alternative Names are not allowed in this role"), backends.ErrRefused, "HTTP 400: URI Subject Alternative Names are not allowed"},
		{"unknown role", re(400, "unknown role: nope"), backends.ErrRefused, "unknown role"},
		{"no such mount", re(404), backends.ErrRefused, "HTTP 404"},
		{"forbidden", re(403, "permission denied"), errPermissionDenied, "permission denied"},
		{"multierror text", re(403, "1 error occurred:\n\t* permission denied\n\n"), errPermissionDenied, "HTTP 403: permission denied"},
		{"several errors", re(400, "2 errors occurred:\n\t* a\n\t* b\n\n"), backends.ErrRefused, "HTTP 400: a; b"},
		{"rate limited", re(429, "request path \"pki/sign/istio\": rate limit quota exceeded"), backends.ErrThrottled, "rate limit"},
		{"internal error", re(500, "internal error"), backends.ErrUnavailable, "HTTP 500"},
		{"sealed", re(503, "Vault is sealed"), backends.ErrUnavailable, "sealed"},
		{"standby not caught up", re(412, "required index state not present"), backends.ErrUnavailable, "412"},
		{"connection refused", &url.Error{Op: "Put", URL: "http://127.0.0.1:1", Err: errors.New("dial tcp: connect: connection refused")}, backends.ErrUnavailable, "connection refused"},
		{"deadline", fmt.Errorf("Put: %w", context.DeadlineExceeded), backends.ErrUnavailable, "deadline"},
		{"token file missing", &os.PathError{Op: "open", Path: "/t", Err: os.ErrNotExist}, errCredentials, "/t"},
		{"token empty", fmt.Errorf("%w: token is empty", errCredentials), errCredentials, "empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kind, detail := classify(tc.err), clean(tc.err)
			if kind != tc.want {
				t.Fatalf("kind = %v, want %v", kind, tc.want)
			}
			if !strings.Contains(detail.Error(), tc.msg) {
				t.Errorf("detail = %q, want it to contain %q", detail, tc.msg)
			}
			if strings.Contains(detail.Error(), "\n") {
				t.Errorf("detail spans lines: %q", detail)
			}
		})
	}
	// What Sign returns keeps both the kind and Vault's words.
	err := wrap("signing at pki/sign/istio", re(403, "permission denied"))
	if !errors.Is(err, backends.ErrRefused) || !strings.Contains(err.Error(), "permission denied by Vault") {
		t.Errorf("wrap(403) = %v", err)
	}
	err = wrap("signing", &os.PathError{Op: "open", Path: "/t", Err: os.ErrNotExist})
	if backends.Retryable(err) || errors.Is(err, backends.ErrRefused) {
		t.Errorf("a missing credential file is reported as %v", err)
	}
}

// testPKI is a two-level PKI made locally, to feed chain handling.
type testPKI struct {
	root, inter, leaf          *x509.Certificate
	rootPEM, interPEM, leafPEM string
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	mk := func(cn string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, ca bool) (*x509.Certificate, *ecdsa.PrivateKey, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: ca, BasicConstraintsValid: true}
		if ca {
			tmpl.KeyUsage = x509.KeyUsageCertSign
		}
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c, key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	}
	p := &testPKI{}
	var rootKey, interKey *ecdsa.PrivateKey
	p.root, rootKey, p.rootPEM = mk("root", nil, nil, true)
	p.inter, interKey, p.interPEM = mk("intermediate", p.root, rootKey, true)
	p.leaf, _, p.leafPEM = mk("", p.inter, interKey, false)
	return p
}

func TestChainFromSecret(t *testing.T) {
	p := newTestPKI(t)
	tests := []struct {
		name string
		data map[string]any
		want []*x509.Certificate
	}{
		{"newer Vault repeats the leaf in ca_chain", map[string]any{
			"certificate": p.leafPEM, "issuing_ca": p.interPEM,
			"ca_chain": []any{p.leafPEM, p.interPEM, p.rootPEM}}, []*x509.Certificate{p.leaf, p.inter, p.root}},
		{"ca_chain without the leaf", map[string]any{
			"certificate": p.leafPEM, "issuing_ca": p.interPEM,
			"ca_chain": []any{p.interPEM, p.rootPEM}}, []*x509.Certificate{p.leaf, p.inter, p.root}},
		{"one ca_chain entry holding several PEM blocks", map[string]any{
			"certificate": p.leafPEM, "ca_chain": []any{p.interPEM + p.rootPEM, p.interPEM}}, []*x509.Certificate{p.leaf, p.inter, p.root}},
		{"older Vault: issuing_ca only", map[string]any{
			"certificate": p.leafPEM, "issuing_ca": p.interPEM}, []*x509.Certificate{p.leaf, p.inter}},
		{"leaf only", map[string]any{"certificate": p.leafPEM}, []*x509.Certificate{p.leaf}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := chainFromSecret(&vaultapi.Secret{Data: tc.data})
			if err != nil {
				t.Fatal(err)
			}
			if !sameCerts(got, tc.want) {
				t.Fatalf("chain = %v, want %v", subjects(got), subjects(tc.want))
			}
		})
	}
	for name, data := range map[string]map[string]any{
		"no certificate":  {"issuing_ca": p.interPEM},
		"garbage":         {"certificate": "not pem"},
		"key in a field":  {"certificate": p.leafPEM, "ca_chain": []any{"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"}},
		"nil data":        nil,
		"truncated chain": {"certificate": p.leafPEM, "issuing_ca": p.interPEM[:len(p.interPEM)-30]},
	} {
		t.Run("rejects "+name, func(t *testing.T) {
			if got, err := chainFromSecret(&vaultapi.Secret{Data: data}); err == nil {
				t.Fatalf("accepted: %v", subjects(got))
			}
		})
	}
}

func TestRoots(t *testing.T) {
	p := newTestPKI(t)
	if got := roots([]*x509.Certificate{p.leaf, p.inter, p.root}); len(got) != 1 || !got[0].Equal(p.root) {
		t.Errorf("roots = %v", subjects(got))
	}
	if got := roots([]*x509.Certificate{p.inter}); len(got) != 0 {
		t.Errorf("an intermediate was taken for a root: %v", subjects(got))
	}
}

func subjects(cs []*x509.Certificate) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Subject.CommonName
	}
	return out
}

func TestSignData(t *testing.T) {
	req, _ := backendtest.NewRequest(t, "spiffe://cluster.local/ns/a/sa/b", time.Hour)
	now := req.Template.NotAfter.Add(-time.Hour)

	s := &Signer{cfg: Config{Mode: modeSign}}
	d, err := s.signData(req, now)
	if err != nil {
		t.Fatal(err)
	}
	if d["uri_sans"] != "spiffe://cluster.local/ns/a/sa/b" || d["ttl"] != "3600s" || d["format"] != "pem" || d["exclude_cn_from_sans"] != true {
		t.Errorf("sign data = %v", d)
	}
	for _, k := range []string{"common_name", "alt_names", "ext_key_usage"} {
		if _, ok := d[k]; ok {
			t.Errorf("sign data has %s: %v", k, d)
		}
	}
	if blk, _ := pem.Decode([]byte(d["csr"].(string))); blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		t.Errorf("csr is not a PEM CSR")
	}

	req.Template.DNSNames = []string{"meshca.istio-system.svc", "meshca"}
	req.Template.Subject.CommonName = "meshca"
	d, _ = s.signData(req, now)
	if d["alt_names"] != "meshca.istio-system.svc,meshca" || d["common_name"] != "meshca" {
		t.Errorf("serving cert sign data = %v", d)
	}

	s.cfg.Mode = modeSignVerbatim
	d, _ = s.signData(req, now)
	if got := fmt.Sprint(d["ext_key_usage"]); got != "[ServerAuth ClientAuth]" {
		t.Errorf("ext_key_usage = %s", got)
	}
	if got := fmt.Sprint(d["key_usage"]); got != "[DigitalSignature KeyEncipherment]" {
		t.Errorf("key_usage = %s", got)
	}
	if _, ok := d["uri_sans"]; ok {
		t.Errorf("sign-verbatim takes names from the CSR; uri_sans sent anyway")
	}

	if _, err := s.signData(req, req.Template.NotAfter.Add(time.Second)); err == nil {
		t.Error("a NotAfter in the past was accepted")
	}
}

// fakeVault answers the sign path the way Vault does for a scripted
// sequence of status codes, and counts logins (token file re-reads are
// visible as lookup-self calls with a new token).
type fakeVault struct {
	t        *testing.T
	pki      *testPKI
	statuses chan int // next status for the sign path; 200 when empty
	signs    atomic.Int32
	tokens   chan string // tokens seen on sign calls
}

func (f *fakeVault) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/v1/auth/token/lookup-self":
		io.WriteString(w, `{"data":{"ttl":0,"renewable":false}}`)
	case "/v1/pki/cert/ca_chain":
		json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{"certificate": f.pki.interPEM + f.pki.rootPEM}})
	case "/v1/pki/sign/istio":
		f.signs.Add(1)
		select {
		case f.tokens <- r.Header.Get("X-Vault-Token"):
		default:
		}
		status := http.StatusOK
		select {
		case status = <-f.statuses:
		default:
		}
		if status != http.StatusOK {
			w.WriteHeader(status)
			fmt.Fprintf(w, `{"errors":["scripted %d"]}`, status)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{
			"certificate": f.pki.leafPEM, "issuing_ca": f.pki.interPEM, "ca_chain": []string{f.pki.leafPEM, f.pki.interPEM, f.pki.rootPEM}}})
	default:
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"errors":[]}`)
	}
}

func TestSignAgainstFakeVault(t *testing.T) {
	f := &fakeVault{t: t, pki: newTestPKI(t), statuses: make(chan int, 10), tokens: make(chan string, 100)}
	srv := httptest.NewServer(f)
	defer srv.Close()
	tokenFile := backendtest.WriteFile(t, "token", []byte("token-1\n"))
	s, err := newSigner(context.Background(), Config{
		Address: srv.URL, Role: "istio", Timeout: backends.Duration{Duration: 2 * time.Second},
		Auth: AuthConfig{Method: "token", Token: &TokenAuth{TokenFile: tokenFile}},
	}, backendtest.QuietLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	req, _ := backendtest.NewRequest(t, "spiffe://cluster.local/ns/a/sa/b", time.Hour)
	drain := func() (out []string) {
		for {
			select {
			case tok := <-f.tokens:
				out = append(out, tok)
			default:
				return out
			}
		}
	}

	t.Run("chain deduplicated, anchors from Vault", func(t *testing.T) {
		chain, err := s.Sign(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if !sameCerts(chain, []*x509.Certificate{f.pki.leaf, f.pki.inter, f.pki.root}) {
			t.Errorf("chain = %v", subjects(chain))
		}
		anchors, err := s.TrustAnchors(context.Background())
		if err != nil || len(anchors) != 1 || !anchors[0].Equal(f.pki.root) {
			t.Errorf("anchors = %v, %v", anchors, err)
		}
		if got := drain(); len(got) != 1 || got[0] != "token-1" {
			t.Errorf("tokens sent = %v (trailing newline must be trimmed)", got)
		}
	})

	t.Run("403 re-reads the token and retries once", func(t *testing.T) {
		os.WriteFile(tokenFile, []byte("token-2"), 0o600)
		f.statuses <- 403
		if _, err := s.Sign(context.Background(), req); err != nil {
			t.Fatalf("Sign after a rotated token = %v", err)
		}
		if got := drain(); strings.Join(got, ",") != "token-1,token-2" {
			t.Errorf("tokens sent = %v, want the old then the re-read one", got)
		}
	})

	t.Run("403 twice is a refusal", func(t *testing.T) {
		f.statuses <- 403
		f.statuses <- 403
		_, err := s.Sign(context.Background(), req)
		if !errors.Is(err, backends.ErrRefused) || !strings.Contains(err.Error(), "permission denied by Vault") {
			t.Fatalf("Sign = %v, want ErrRefused: permission denied", err)
		}
		drain()
	})

	for _, tc := range []struct {
		status int
		want   error
	}{{400, backends.ErrRefused}, {429, backends.ErrThrottled}, {500, backends.ErrUnavailable}, {502, backends.ErrUnavailable}, {503, backends.ErrUnavailable}} {
		t.Run(fmt.Sprintf("HTTP %d", tc.status), func(t *testing.T) {
			before := f.signs.Load()
			f.statuses <- tc.status
			_, err := s.Sign(context.Background(), req)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), fmt.Sprintf("scripted %d", tc.status)) {
				t.Fatalf("Sign = %v, want %v with Vault's message", err, tc.want)
			}
			if n := f.signs.Load() - before; n != 1 {
				t.Errorf("%d sign calls; the backend must not retry by itself", n)
			}
			drain()
		})
	}

	t.Run("unknown role path", func(t *testing.T) {
		s2, err := newSigner(context.Background(), Config{Address: srv.URL, Role: "nope",
			Auth: AuthConfig{Method: "token", Token: &TokenAuth{Token: "x"}}}, backendtest.QuietLogger())
		if err != nil {
			t.Fatal(err)
		}
		defer s2.Close()
		if _, err := s2.Sign(context.Background(), req); !errors.Is(err, backends.ErrRefused) {
			t.Fatalf("Sign = %v, want ErrRefused", err)
		}
	})

	t.Run("missing token file is neither retryable nor a refusal", func(t *testing.T) {
		_, err := newSigner(context.Background(), Config{Address: srv.URL, Role: "istio",
			Auth: AuthConfig{Method: "token", Token: &TokenAuth{TokenFile: "/nonexistent/token"}}}, backendtest.QuietLogger())
		if err == nil || backends.Retryable(err) || errors.Is(err, backends.ErrRefused) {
			t.Fatalf("newSigner = %v", err)
		}
	})
}

func TestSignHonoursDeadlines(t *testing.T) {
	release := make(chan struct{})
	pki := newTestPKI(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/pki/sign/istio" {
			<-release
		}
		(&fakeVault{pki: pki}).ServeHTTP(w, r)
	}))
	defer srv.Close()
	defer close(release) // before Close, which waits for the handlers
	s, err := newSigner(context.Background(), Config{Address: srv.URL, Role: "istio", Timeout: backends.Duration{Duration: 300 * time.Millisecond},
		Auth: AuthConfig{Method: "token", Token: &TokenAuth{Token: "x"}}}, backendtest.QuietLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	req, _ := backendtest.NewRequest(t, "spiffe://cluster.local/ns/a/sa/b", time.Hour)
	start := time.Now()
	if _, err := s.Sign(context.Background(), req); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("Sign past the configured timeout = %v, want ErrUnavailable", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := s.Sign(ctx, req); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("Sign past the caller's deadline = %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("two bounded calls took %v", d)
	}
}

func TestRegistered(t *testing.T) {
	for _, typ := range backends.Types() {
		if typ == "vault" {
			return
		}
	}
	t.Fatalf("type vault not registered: %v", backends.Types())
}
