package kube

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	ktesting "k8s.io/client-go/testing"

	"github.com/meshca/broker/authn"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

// goodToken is plausible (see plausible): TokenReview is asked only about
// those.
var goodToken = func() string {
	tok, err := signWithThrowawayKey("k1", saClaims(nil))
	if err != nil {
		panic(err)
	}
	return tok
}()

// fakeReview returns a clientset whose TokenReview answers with status (or
// err), recording the last spec it was sent.
func fakeReview(t *testing.T, status authenticationv1.TokenReviewStatus, err error) (kubernetes.Interface, *authenticationv1.TokenReviewSpec) {
	t.Helper()
	cs := fake.NewClientset()
	var got authenticationv1.TokenReviewSpec
	cs.PrependReactor("create", "tokenreviews", func(action ktesting.Action) (bool, runtime.Object, error) {
		tr := action.(ktesting.CreateAction).GetObject().(*authenticationv1.TokenReview)
		got = tr.Spec
		if err != nil {
			return true, nil, err
		}
		out := tr.DeepCopy()
		out.Status = status
		return true, out, nil
	})
	return cs, &got
}

func ok(username string, aud ...string) authenticationv1.TokenReviewStatus {
	if len(aud) == 0 {
		aud = []string{"istio-ca"}
	}
	return authenticationv1.TokenReviewStatus{
		Authenticated: true,
		Audiences:     aud,
		User:          authenticationv1.UserInfo{Username: username},
	}
}

func TestAuthenticate(t *testing.T) {
	withPod := ok("system:serviceaccount:team-a:sa1")
	withPod.User.Extra = map[string]authenticationv1.ExtraValue{PodNameExtra: {"web-0"}}
	gr := schema.GroupResource{Group: "authentication.k8s.io", Resource: "tokenreviews"}

	tests := []struct {
		name        string
		req         authn.Request
		status      authenticationv1.TokenReviewStatus
		err         error
		audiences   []string
		wantKind    error
		wantMsg     string
		wantID      string
		wantCluster string
		wantSubject string
	}{
		{name: "no token", req: authn.Request{}, wantKind: authn.ErrNoCredential},
		{name: "good", req: authn.Request{BearerToken: goodToken}, status: ok("system:serviceaccount:team-a:sa1"),
			wantID: "spiffe://cluster.local/ns/team-a/sa/sa1", wantCluster: "Kubernetes", wantSubject: "system:serviceaccount:team-a:sa1"},
		{name: "good with pod", req: authn.Request{BearerToken: goodToken, ClusterID: "Kubernetes"}, status: withPod,
			wantID: "spiffe://cluster.local/ns/team-a/sa/sa1", wantCluster: "Kubernetes", wantSubject: "system:serviceaccount:team-a:sa1 pod=web-0"},
		{name: "unknown cluster", req: authn.Request{BearerToken: goodToken, ClusterID: "cluster2"}, status: ok("system:serviceaccount:a:b"),
			wantKind: authn.ErrNoCredential, wantMsg: `unknown cluster "cluster2"`},
		{name: "status error", req: authn.Request{BearerToken: goodToken},
			status:   authenticationv1.TokenReviewStatus{Error: "[invalid bearer token, token audiences [\"other\"] is invalid for the target audiences [\"istio-ca\"]]"},
			wantKind: authn.ErrDenied, wantMsg: "invalid bearer token"},
		{name: "not authenticated", req: authn.Request{BearerToken: goodToken}, status: authenticationv1.TokenReviewStatus{},
			wantKind: authn.ErrDenied, wantMsg: "not authenticated"},
		{name: "status without audiences", req: authn.Request{BearerToken: goodToken},
			status:   authenticationv1.TokenReviewStatus{Authenticated: true, User: authenticationv1.UserInfo{Username: "system:serviceaccount:a:b"}},
			wantKind: authn.ErrDenied, wantMsg: "audiences"},
		{name: "status with other audience", req: authn.Request{BearerToken: goodToken}, status: ok("system:serviceaccount:a:b", "https://kubernetes.default.svc"),
			wantKind: authn.ErrDenied, wantMsg: "audiences"},
		{name: "configured audiences", req: authn.Request{BearerToken: goodToken}, audiences: []string{"mesh-ca", "istio-ca"},
			status: ok("system:serviceaccount:a:b", "mesh-ca"), wantID: "spiffe://cluster.local/ns/a/sa/b", wantCluster: "Kubernetes"},
		{name: "not a service account", req: authn.Request{BearerToken: goodToken}, status: ok("alice"),
			wantKind: authn.ErrDenied, wantMsg: "not a service account"},
		{name: "malformed service account", req: authn.Request{BearerToken: goodToken}, status: ok("system:serviceaccount:a"),
			wantKind: authn.ErrDenied, wantMsg: "malformed"},
		{name: "bad namespace", req: authn.Request{BearerToken: goodToken}, status: ok("system:serviceaccount:A_B:sa"),
			wantKind: authn.ErrDenied, wantMsg: "namespace"},
		{name: "internal error", req: authn.Request{BearerToken: goodToken}, err: apierrors.NewInternalError(errors.New("etcd down")), wantKind: authn.ErrUnavailable},
		{name: "service unavailable", req: authn.Request{BearerToken: goodToken}, err: apierrors.NewServiceUnavailable("starting"), wantKind: authn.ErrUnavailable},
		{name: "too many requests", req: authn.Request{BearerToken: goodToken}, err: apierrors.NewTooManyRequests("slow down", 1), wantKind: authn.ErrUnavailable},
		{name: "server timeout", req: authn.Request{BearerToken: goodToken}, err: apierrors.NewServerTimeout(gr, "create", 1), wantKind: authn.ErrUnavailable},
		{name: "timeout", req: authn.Request{BearerToken: goodToken}, err: apierrors.NewTimeoutError("slow", 1), wantKind: authn.ErrUnavailable},
		{name: "forbidden", req: authn.Request{BearerToken: goodToken}, err: apierrors.NewForbidden(gr, "", errors.New("rbac")), wantKind: authn.ErrUnavailable, wantMsg: "system:auth-delegator"},
		{name: "bad request", req: authn.Request{BearerToken: goodToken}, err: apierrors.NewBadRequest("bad token"), wantKind: authn.ErrDenied},
		{name: "deadline", req: authn.Request{BearerToken: goodToken}, err: context.DeadlineExceeded, wantKind: authn.ErrUnavailable},
		{name: "connection refused", req: authn.Request{BearerToken: goodToken},
			err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, wantKind: authn.ErrUnavailable},
		{name: "huge token", req: authn.Request{BearerToken: strings.Repeat("a", maxTokenBytes+1)}, wantKind: authn.ErrDenied},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cs, spec := fakeReview(t, tc.status, tc.err)
			a, err := NewWithReviewer(Config{TrustDomain: td, Audiences: tc.audiences}, ClientReviewer{Client: cs})
			if err != nil {
				t.Fatal(err)
			}
			id, err := a.Authenticate(context.Background(), &tc.req)
			if tc.wantKind != nil {
				if !errors.Is(err, tc.wantKind) {
					t.Fatalf("err = %v, want %v", err, tc.wantKind)
				}
				if !strings.Contains(err.Error(), tc.wantMsg) {
					t.Fatalf("err = %q, want it to contain %q", err, tc.wantMsg)
				}
				if strings.Contains(err.Error(), goodToken) {
					t.Fatalf("error leaks the token: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.ID.String() != tc.wantID || id.Cluster != tc.wantCluster {
				t.Fatalf("identity = %s in %q, want %s in %q", id.ID, id.Cluster, tc.wantID, tc.wantCluster)
			}
			if tc.wantSubject != "" && id.Subject != tc.wantSubject {
				t.Fatalf("subject = %q, want %q", id.Subject, tc.wantSubject)
			}
			wantAud := tc.audiences
			if wantAud == nil {
				wantAud = []string{"istio-ca"}
			}
			if spec.Token != goodToken || !slices.Equal(spec.Audiences, wantAud) {
				t.Fatalf("review spec = %+v, want token and audiences %q", spec, wantAud)
			}
		})
	}
}

func TestRemoteClusters(t *testing.T) {
	local, _ := fakeReview(t, ok("system:serviceaccount:a:local"), nil)
	remote, _ := fakeReview(t, ok("system:serviceaccount:b:remote"), nil)
	a, err := NewWithReviewer(Config{TrustDomain: td, ClusterID: "east",
		Remote: ClusterMap{"west": ClientReviewer{Client: remote}}}, ClientReviewer{Client: local})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ cluster, wantID, wantCluster string }{
		{"", "spiffe://cluster.local/ns/a/sa/local", "east"},
		{"east", "spiffe://cluster.local/ns/a/sa/local", "east"},
		{"west", "spiffe://cluster.local/ns/b/sa/remote", "west"},
	} {
		id, err := a.Authenticate(context.Background(), &authn.Request{BearerToken: goodToken, ClusterID: tc.cluster})
		if err != nil {
			t.Fatalf("cluster %q: %v", tc.cluster, err)
		}
		if id.ID.String() != tc.wantID || id.Cluster != tc.wantCluster {
			t.Fatalf("cluster %q: got %s in %q", tc.cluster, id.ID, id.Cluster)
		}
	}
	_, err = a.Authenticate(context.Background(), &authn.Request{BearerToken: goodToken, ClusterID: "Kubernetes"})
	if !errors.Is(err, authn.ErrNoCredential) || !strings.Contains(err.Error(), `unknown cluster "Kubernetes"`) || strings.Contains(err.Error(), `"east"`) {
		t.Fatalf("default cluster name on a named broker: %v", err)
	}
}

type reviewerFunc func(ctx context.Context, token string, audiences []string) (*authenticationv1.TokenReviewStatus, error)

func (f reviewerFunc) Review(ctx context.Context, token string, audiences []string) (*authenticationv1.TokenReviewStatus, error) {
	return f(ctx, token, audiences)
}

func TestTimeoutBoundsReview(t *testing.T) {
	a, err := NewWithReviewer(Config{TrustDomain: td, Timeout: 50 * time.Millisecond}, reviewerFunc(
		func(ctx context.Context, _ string, _ []string) (*authenticationv1.TokenReviewStatus, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = a.Authenticate(context.Background(), &authn.Request{BearerToken: goodToken})
	if !errors.Is(err, authn.ErrUnavailable) {
		t.Fatalf("err = %v, want unavailable", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("review took %v despite a 50ms timeout", d)
	}
}

func TestConfigValidation(t *testing.T) {
	if _, err := NewWithReviewer(Config{}, reviewerFunc(nil)); err == nil {
		t.Fatal("missing trust domain accepted")
	}
	if _, err := NewWithReviewer(Config{TrustDomain: td}, nil); err == nil {
		t.Fatal("missing reviewer accepted")
	}
	if _, err := NewWithReviewer(Config{TrustDomain: td, Audiences: []string{""}}, reviewerFunc(nil)); err == nil {
		t.Fatal("empty audience accepted")
	}
	a, err := NewWithReviewer(Config{TrustDomain: td}, reviewerFunc(nil))
	if err != nil || a.ClusterID() != DefaultClusterID || a.timeout != DefaultTimeout {
		t.Fatalf("defaults: %v %+v", err, a)
	}
}

// TestHTTPErrors drives the real client-go stack against a fake API server,
// so the mapping of what client-go actually returns is covered.
func TestHTTPErrors(t *testing.T) {
	var mode atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/apis/authentication.k8s.io/v1/tokenreviews" || r.Method != http.MethodPost {
			http.NotFound(w, r)
			return
		}
		switch mode.Load().(string) {
		case "ok":
			var tr authenticationv1.TokenReview
			if err := json.NewDecoder(r.Body).Decode(&tr); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			tr.APIVersion, tr.Kind = "authentication.k8s.io/v1", "TokenReview"
			tr.Status = ok("system:serviceaccount:default:web")
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusCreated)
			_ = json.NewEncoder(w).Encode(&tr)
		case "500":
			http.Error(w, "boom", http.StatusInternalServerError)
		case "503":
			http.Error(w, "starting", http.StatusServiceUnavailable)
		case "429":
			http.Error(w, "slow down", http.StatusTooManyRequests)
		case "403":
			http.Error(w, "forbidden", http.StatusForbidden)
		case "hang":
			// The server notices the client went away only once the
			// body is consumed.
			_, _ = io.Copy(io.Discard, r.Body)
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		case "garbage":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusCreated)
			_, _ = w.Write([]byte("{not json"))
		}
	}))
	defer srv.Close()

	newAuth := func(host string) *Authenticator {
		cs, err := kubernetes.NewForConfig(&rest.Config{Host: host, ContentConfig: rest.ContentConfig{ContentType: "application/json"}})
		if err != nil {
			t.Fatal(err)
		}
		a, err := NewWithReviewer(Config{TrustDomain: td, Timeout: 300 * time.Millisecond}, ClientReviewer{Client: cs})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	a := newAuth(srv.URL)
	for _, tc := range []struct {
		mode string
		want error
	}{
		{"ok", nil},
		{"500", authn.ErrUnavailable},
		{"503", authn.ErrUnavailable},
		{"429", authn.ErrUnavailable},
		{"403", authn.ErrUnavailable},
		{"hang", authn.ErrUnavailable},
		{"garbage", authn.ErrUnavailable},
	} {
		mode.Store(tc.mode)
		id, err := a.Authenticate(context.Background(), &authn.Request{BearerToken: goodToken})
		if tc.want == nil {
			if err != nil || id.ID.String() != "spiffe://cluster.local/ns/default/sa/web" {
				t.Fatalf("%s: %v %v", tc.mode, id, err)
			}
			continue
		}
		if !errors.Is(err, tc.want) {
			t.Fatalf("%s: err = %v, want %v", tc.mode, err, tc.want)
		}
		t.Logf("%s: %v", tc.mode, err)
	}

	// Nothing listening.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = newAuth("http://"+addr).Authenticate(context.Background(), &authn.Request{BearerToken: goodToken})
	if !errors.Is(err, authn.ErrUnavailable) {
		t.Fatalf("connection refused: %v", err)
	}
}

func TestChainIntegration(t *testing.T) {
	cs, _ := fakeReview(t, ok("system:serviceaccount:a:b"), nil)
	a, err := NewWithReviewer(Config{TrustDomain: td}, ClientReviewer{Client: cs})
	if err != nil {
		t.Fatal(err)
	}
	id, err := authn.Chain{a}.Authenticate(context.Background(), &authn.Request{BearerToken: goodToken})
	if err != nil || id.Method != "kube-tokenreview" {
		t.Fatalf("chain: %v %+v", err, id)
	}
}
