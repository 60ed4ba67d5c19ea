package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/meshca/broker/integration/testenv"
)

// testRegistry is a registry whose views point at a closed port on
// 127.0.0.1 (so its policy allows loopback and, with no CA at hand,
// skipped TLS verification): they never sync, and ownership needs no
// more.
func testRegistry(t *testing.T, aliases map[string]string) (*Registry, *testenv.LogBuffer) {
	t.Helper()
	logs := &testenv.LogBuffer{}
	r, err := NewRegistry(RegistryConfig{
		LocalID: "local", Local: &rest.Config{Host: "https://127.0.0.1:1"}, Aliases: aliases,
		KubeconfigPolicy: KubeconfigPolicy{AllowLoopback: true, AllowInsecureTLS: true},
		Options:          Options{SyncTimeout: time.Hour, Log: slog.New(slog.NewTextHandler(logs, nil))},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.mu.Lock()
		all := append(mapValues(r.remotes), mapValues(r.pending)...)
		r.mu.Unlock()
		for _, c := range all {
			c.Stop()
		}
	})
	return r, logs
}

func mapValues(m map[string]*Cluster) []*Cluster {
	out := make([]*Cluster, 0, len(m))
	for _, c := range m {
		out = append(out, c)
	}
	return out
}

// remoteSecret is a remote secret created at second sec, its keys the
// cluster IDs it claims.
func remoteSecret(name string, sec int, ids ...string) *corev1.Secret {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: name, CreationTimestamp: metav1.NewTime(time.Unix(int64(1000+sec), 0))}, Data: map[string][]byte{}}
	for _, id := range ids {
		// Each Secret's own credentials, so a hand-over is a change.
		s.Data[id] = kubeconfigAt("https://127.0.0.1:1", "insecure-skip-tls-verify: true", "token: "+name)
	}
	return s
}

// owner is the source the registry applied for id ("" when none), and
// whether a view of it exists (serving or syncing).
func (r *Registry) ownerOf(id string) (source, bool) {
	r.applyMu.Lock()
	cur := r.owners.serving[id]
	r.applyMu.Unlock()
	r.mu.RLock()
	defer r.mu.RUnlock()
	return cur.src, r.remotes[id] != nil || r.pending[id] != nil
}

// TestOwnershipDependsOnTheSecretsAlone: whatever order the Secrets are
// seen in, the oldest (then namespace/name) owns a cluster; when it goes
// or stops claiming the cluster, the next one owns it in the same pass.
func TestOwnershipDependsOnTheSecretsAlone(t *testing.T) {
	old, newer, sameSecond := remoteSecret("a-old", 0, "west"), remoteSecret("z-new", 5, "west"), remoteSecret("b-same", 0, "west")
	oldWithout := remoteSecret("a-old", 0, "east")
	cases := []struct {
		name  string
		steps [][]*corev1.Secret // what the informer lists at each event
		owner source             // "" means none
	}{
		{"one secret", [][]*corev1.Secret{{newer}}, "secret istio-system/z-new"},
		{"older seen first", [][]*corev1.Secret{{old}, {old, newer}}, "secret istio-system/a-old"},
		{"older seen last", [][]*corev1.Secret{{newer}, {newer, old}}, "secret istio-system/a-old"},
		{"listed together", [][]*corev1.Secret{{newer, old}}, "secret istio-system/a-old"},
		{"same second: by name", [][]*corev1.Secret{{sameSecond}, {sameSecond, old}}, "secret istio-system/a-old"},
		{"owner deleted", [][]*corev1.Secret{{old, newer}, {newer}}, "secret istio-system/z-new"},
		{"owner stops claiming", [][]*corev1.Secret{{old, newer}, {oldWithout, newer}}, "secret istio-system/z-new"},
		{"owner deleted, then back", [][]*corev1.Secret{{old, newer}, {newer}, {newer, old}}, "secret istio-system/a-old"},
		{"all deleted", [][]*corev1.Secret{{old, newer}, {}}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := testRegistry(t, nil)
			seen := map[source]bool{}
			for _, step := range tc.steps {
				objs := make([]any, len(step))
				for i, s := range step {
					objs[i] = s
				}
				r.syncSecrets(objs, seen)
			}
			got, exists := r.ownerOf("west")
			if got != tc.owner || exists != (tc.owner != "") {
				t.Fatalf("owner %q (view exists: %v), want %q", got, exists, tc.owner)
			}
		})
	}
}

// TestKubeconfigDirRanksBeforeSecrets: the deployment's own directory
// owns a cluster a Secret claims too, whichever came first.
func TestKubeconfigDirRanksBeforeSecrets(t *testing.T) {
	r, _ := testRegistry(t, nil)
	r.syncSecrets([]any{remoteSecret("s", 0, "west")}, map[source]bool{})
	rc, err := RESTConfigFromKubeconfig(kubeconfigAt("https://127.0.0.1:1", "insecure-skip-tls-verify: true", "token: dir"), r.cfg.KubeconfigPolicy)
	if err != nil {
		t.Fatal(err)
	}
	r.apply("dir /x", rank{dir: true}, map[string]desired{"west": {kubeconfig: []byte("dir"), rc: rc}})
	if got, exists := r.ownerOf("west"); got != "dir /x" || !exists {
		t.Fatalf("owner %q, want the directory", got)
	}
	r.apply("dir /x", rank{dir: true}, map[string]desired{})
	if got, exists := r.ownerOf("west"); got != "secret istio-system/s" || !exists {
		t.Fatalf("owner %q after the file went, want the Secret", got)
	}
}

// TestRemoteSecretNamingTheLocalClusterOrAnAliasIsRefused: neither is
// served, and each refusal is logged naming the Secret and the key.
func TestRemoteSecretNamingTheLocalClusterOrAnAliasIsRefused(t *testing.T) {
	r, logs := testRegistry(t, map[string]string{"old-west": "west"})
	r.syncSecrets([]any{remoteSecret("s", 0, "local", "old-west", "west")}, map[source]bool{})
	for _, tc := range []struct{ id, mention string }{
		{"local", "it is the local cluster's ID"},
		{"old-west", `it is an alias (of \"west\")`},
	} {
		if got, exists := r.ownerOf(tc.id); got != "" || exists {
			t.Errorf("%s: owned by %q", tc.id, got)
		}
		want := fmt.Sprintf("source=\"secret istio-system/s\" cluster=%s", tc.id)
		if out := logs.String(); !strings.Contains(out, tc.mention) || !strings.Contains(out, want) {
			t.Errorf("%s: no refusal naming the Secret and key in the log:\n%s", tc.id, out)
		}
	}
	if got, exists := r.ownerOf("west"); got != "secret istio-system/s" || !exists {
		t.Errorf("west: owner %q, want the Secret", got)
	}
}

// TestUnknownClusterNamesOnlyTheRequestedID: the error reaches
// unauthenticated callers.
func TestUnknownClusterNamesOnlyTheRequestedID(t *testing.T) {
	r, _ := testRegistry(t, nil)
	r.syncSecrets([]any{remoteSecret("s", 0, "west")}, map[source]bool{})
	_, err := r.Get("east")
	if !errors.Is(err, ErrUnknown) || err.Error() != `unknown cluster "east"` {
		t.Fatalf("err = %v, want exactly unknown cluster \"east\"", err)
	}
}

// TestRemoteSecretRefusalsNameSecretAndKey: a kubeconfig the policy
// refuses is logged with the Secret's namespace/name and the data key.
func TestRemoteSecretRefusalsNameSecretAndKey(t *testing.T) {
	r, logs := testRegistry(t, nil)
	s := remoteSecret("s", 0)
	s.Data["west"] = kubeconfigAt("https://169.254.169.254", caData, "token: x")
	r.syncSecrets([]any{s}, map[source]bool{})
	out := logs.String()
	if !strings.Contains(out, "remote secret refused") || !strings.Contains(out, "secret=istio-system/s key=west") || !strings.Contains(out, "link-local address 169.254.169.254") {
		t.Fatalf("log does not name the Secret, key and reason:\n%s", out)
	}
}
