package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// MultiClusterLabel marks the Secrets `istioctl create-remote-secret`
// writes: each data key is a cluster ID, its value a kubeconfig.
const MultiClusterLabel = "istio/multiCluster"

// KubeconfigPolicy says what a remote cluster's kubeconfig may do. A
// kubeconfig in a Secret is untrusted input: an exec plugin runs a command
// in the broker's container, an auth provider or a file reference reads
// what the broker can read. All are refused unless allowed.
type KubeconfigPolicy struct {
	AllowExec         bool
	AllowAuthProvider bool
	AllowFiles        bool
}

// RESTConfigFromKubeconfig checks a kubeconfig against the policy and
// returns the REST configuration of its current context.
func RESTConfigFromKubeconfig(raw []byte, p KubeconfigPolicy) (*rest.Config, error) {
	kc, err := clientcmd.Load(raw)
	if err != nil {
		return nil, fmt.Errorf("not a valid kubeconfig: %w", err)
	}
	ctxName := kc.CurrentContext
	kctx, ok := kc.Contexts[ctxName]
	if !ok || kctx == nil {
		return nil, fmt.Errorf("kubeconfig's current context %q does not exist", ctxName)
	}
	if u := kc.AuthInfos[kctx.AuthInfo]; u != nil {
		switch {
		case u.Exec != nil && !p.AllowExec:
			return nil, fmt.Errorf("kubeconfig user %q runs an exec plugin (%s); not allowed for remote clusters", kctx.AuthInfo, u.Exec.Command)
		case u.AuthProvider != nil && !p.AllowAuthProvider:
			return nil, fmt.Errorf("kubeconfig user %q uses auth provider %q; not allowed for remote clusters", kctx.AuthInfo, u.AuthProvider.Name)
		case !p.AllowFiles && (u.ClientCertificate != "" || u.ClientKey != "" || u.TokenFile != ""):
			return nil, fmt.Errorf("kubeconfig user %q refers to files on the broker's disk; not allowed for remote clusters (inline the data)", kctx.AuthInfo)
		}
	}
	if c := kc.Clusters[kctx.Cluster]; c != nil && c.CertificateAuthority != "" && !p.AllowFiles {
		return nil, fmt.Errorf("kubeconfig cluster %q refers to a CA file on the broker's disk; not allowed for remote clusters (inline certificate-authority-data)", kctx.Cluster)
	}
	rc, err := clientcmd.NewNonInteractiveClientConfig(*kc, ctxName, &clientcmd.ConfigOverrides{}, nil).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	return rc, nil
}

// watchSecrets follows the remote secrets in the broker's namespace of
// the local cluster until ctx ends.
func (r *Registry) watchSecrets(ctx context.Context) {
	factory := informers.NewSharedInformerFactoryWithOptions(r.local.Client, 0,
		informers.WithNamespace(r.cfg.SecretNamespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = MultiClusterLabel + "=true" }))
	inf := factory.Core().V1().Secrets().Informer()
	changed := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: poke, UpdateFunc: func(_, o any) { poke(o) }, DeleteFunc: poke,
	}); err != nil {
		r.log.Error("remote secrets: cannot watch", "error", err)
		return
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return
	}
	seen := map[source]bool{}
	for {
		r.syncSecrets(inf.GetStore().List(), seen)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// syncSecrets applies every remote secret, oldest first (so the first
// Secret to claim a cluster keeps it), and withdraws the ones gone.
func (r *Registry) syncSecrets(objs []any, seen map[source]bool) {
	secrets := make([]*corev1.Secret, 0, len(objs))
	for _, o := range objs {
		if s, ok := o.(*corev1.Secret); ok {
			secrets = append(secrets, s)
		}
	}
	sort.Slice(secrets, func(i, j int) bool {
		a, b := secrets[i].CreationTimestamp, secrets[j].CreationTimestamp
		if !a.Equal(&b) {
			return a.Before(&b)
		}
		return secrets[i].Name < secrets[j].Name
	})
	now := map[source]bool{}
	for _, s := range secrets {
		src := source("secret " + s.Namespace + "/" + s.Name)
		now[src] = true
		want := map[string]desired{}
		for id, kubeconfig := range s.Data {
			rc, err := RESTConfigFromKubeconfig(kubeconfig, r.cfg.KubeconfigPolicy)
			if err != nil {
				r.log.Error("remote secret refused", "secret", s.Namespace+"/"+s.Name, "key", id, "error", err)
				continue
			}
			want[id] = desired{kubeconfig: kubeconfig, rc: rc}
		}
		r.apply(src, want, r.owners)
	}
	for src := range seen {
		if !now[src] {
			r.apply(src, map[string]desired{}, r.owners)
		}
	}
	clear(seen)
	for src := range now {
		seen[src] = true
	}
}

// watchDir re-reads the kubeconfig directory every few seconds: each
// regular file is one remote cluster, named by the file's name (hidden
// files, such as a mounted Secret's ..data links, are skipped).
func (r *Registry) watchDir(ctx context.Context) {
	src := source("dir " + r.cfg.KubeconfigDir)
	for {
		want, err := readKubeconfigDir(r.cfg.KubeconfigDir, r.cfg.KubeconfigPolicy, r.log.Error)
		if err != nil {
			r.log.Error("kubeconfig directory unreadable; keeping the clusters it had", "dir", r.cfg.KubeconfigDir, "error", err)
		} else {
			r.apply(src, want, r.owners)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pollInterval):
		}
	}
}

func readKubeconfigDir(dir string, p KubeconfigPolicy, logError func(string, ...any)) (map[string]desired, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	want := map[string]desired{}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue
		}
		path := filepath.Join(dir, name)
		if st, err := os.Stat(path); err != nil || !st.Mode().IsRegular() {
			continue
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			logError("kubeconfig file unreadable", "file", path, "error", err)
			continue
		}
		rc, err := RESTConfigFromKubeconfig(raw, p)
		if err != nil {
			logError("kubeconfig file refused", "file", path, "error", err)
			continue
		}
		want[name] = desired{kubeconfig: raw, rc: rc}
	}
	return want, nil
}
