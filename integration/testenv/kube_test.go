package testenv_test

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/broker/integration/testenv"
)

func TestKubeTokenReview(t *testing.T) {
	t.Parallel()
	k := testenv.StartKube(t)
	ctx := context.Background()
	k.CreateNamespace(t, "team-a")
	k.CreateServiceAccount(t, "team-a", "sa1")

	tok, err := k.Token(ctx, "team-a", "sa1", []string{testenv.IstioCAAudience}, time.Hour, "")
	if err != nil {
		t.Fatal(err)
	}
	st, err := k.TokenReview(ctx, tok, []string{testenv.IstioCAAudience})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Authenticated || st.User.Username != "system:serviceaccount:team-a:sa1" {
		t.Fatalf("review with istio-ca: %+v", st)
	}
	st, err = k.TokenReview(ctx, tok, []string{"some-other-audience"})
	if err != nil {
		t.Fatal(err)
	}
	if st.Authenticated {
		t.Fatalf("token accepted for a wrong audience: %+v", st)
	}
	t.Logf("wrong audience refused: %s", st.Error)

	// JWKS and discovery are served; kubeconfig works.
	jwks, err := k.JWKS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(jwks, &set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("jwks: %v %s", err, jwks)
	}
	oidc, err := k.OpenIDConfiguration(ctx)
	if err != nil || !strings.Contains(string(oidc), k.Issuer) {
		t.Fatalf("openid configuration: %v %s", err, oidc)
	}
	if b, err := os.ReadFile(k.Kubeconfig); err != nil || !strings.Contains(string(b), k.URL) {
		t.Fatalf("kubeconfig: %v", err)
	}
	v, err := k.Client.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver %s at %s", v.GitVersion, k.URL)
	if !strings.HasPrefix(v.GitVersion, "v1.36.") {
		t.Errorf("server version %s, want v1.36.x", v.GitVersion)
	}
}

func TestKubeBoundTokenRefusedAfterPodDeletion(t *testing.T) {
	t.Parallel()
	k := testenv.StartKube(t)
	ctx := context.Background()
	k.CreateNamespace(t, "apps")
	k.CreateServiceAccount(t, "apps", "web")
	pod := k.CreatePod(t, "apps", "web-0", "web")
	if pod.Spec.NodeName == "" {
		t.Fatal("pod not bound to a node")
	}
	tok, err := k.Token(ctx, "apps", "web", []string{testenv.IstioCAAudience}, 10*time.Minute, "web-0")
	if err != nil {
		t.Fatal(err)
	}
	st, err := k.TokenReview(ctx, tok, []string{testenv.IstioCAAudience})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Authenticated {
		t.Fatalf("bound token refused while the pod exists: %s", st.Error)
	}
	if got := st.User.Extra["authentication.kubernetes.io/pod-name"]; len(got) != 1 || got[0] != "web-0" {
		t.Errorf("pod-name extra = %v", got)
	}

	k.DeletePod(t, "apps", "web-0")
	if _, err := k.Client.CoreV1().Pods("apps").Get(ctx, "web-0", metav1.GetOptions{}); err == nil {
		t.Fatal("pod still exists after DeletePod")
	}
	deleted := time.Now()
	deadline := deleted.Add(30 * time.Second)
	for {
		st, err = k.TokenReview(ctx, tok, []string{testenv.IstioCAAudience})
		if err != nil {
			t.Fatal(err)
		}
		if !st.Authenticated {
			t.Logf("refused %v after pod deletion: %s", time.Since(deleted), st.Error)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("pod-bound token still accepted 30s after the pod was deleted")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestTwoClustersOnOneEtcd(t *testing.T) {
	t.Parallel()
	e := testenv.StartEtcd(t)
	east := testenv.StartKube(t, testenv.KubeEtcd(e), testenv.KubeName("east"))
	west := testenv.StartKube(t, testenv.KubeEtcd(e), testenv.KubeName("west"))
	ctx := context.Background()
	for _, k := range []*testenv.Kube{east, west} {
		k.CreateNamespace(t, "shared")
		k.CreateServiceAccount(t, "shared", "app")
	}
	east.CreateNamespace(t, "east-only")
	if _, err := west.Client.CoreV1().Namespaces().Get(ctx, "east-only", metav1.GetOptions{}); err == nil {
		t.Fatal("clusters share objects: east's namespace is visible in west")
	}
	for _, c := range []struct{ from, to *testenv.Kube }{{east, west}, {west, east}} {
		tok, err := c.from.Token(ctx, "shared", "app", []string{testenv.IstioCAAudience}, 0, "")
		if err != nil {
			t.Fatal(err)
		}
		st, err := c.from.TokenReview(ctx, tok, []string{testenv.IstioCAAudience})
		if err != nil || !st.Authenticated {
			t.Fatalf("%s refuses its own token: %v %+v", c.from.Name, err, st)
		}
		st, err = c.to.TokenReview(ctx, tok, []string{testenv.IstioCAAudience})
		if err != nil {
			t.Fatal(err)
		}
		if st.Authenticated {
			t.Fatalf("%s accepted a token from %s", c.to.Name, c.from.Name)
		}
		t.Logf("%s refuses %s's token: %s", c.to.Name, c.from.Name, st.Error)
	}
}
