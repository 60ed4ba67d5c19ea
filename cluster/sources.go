package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
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
// kubeconfig in a Secret is untrusted input: whoever may write a Secret in
// the broker's namespace writes it. An exec plugin runs a command in the
// broker's container, an auth provider or a file reference reads what the
// broker can read; a server on loopback or link-local addresses (cloud
// metadata endpoints) turns the broker's requests against its own pod or
// node; a plaintext server, skipped TLS verification or a proxy hand the
// bearer token to whoever is on the path. All are refused unless allowed.
type KubeconfigPolicy struct {
	AllowExec         bool
	AllowAuthProvider bool
	AllowFiles        bool
	// AllowInsecureTLS allows insecure-skip-tls-verify: true.
	AllowInsecureTLS bool
	// AllowPlaintext allows an http:// server (the token sent in clear).
	AllowPlaintext bool
	// AllowProxy allows proxy-url.
	AllowProxy bool
	// AllowLoopback allows a server on a loopback or unspecified address,
	// or named localhost (tests whose API servers listen on 127.0.0.1).
	AllowLoopback bool
	// AllowLinkLocal allows a server on a link-local address
	// (169.254.0.0/16, fe80::/10: cloud metadata endpoints among them).
	AllowLinkLocal bool
}

// RESTConfigFromKubeconfig checks a kubeconfig against the policy and
// returns the REST configuration of its current context. Each refusal
// names what was refused and the policy setting that would allow it.
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
			return nil, fmt.Errorf("kubeconfig user %q runs an exec plugin (%s); not allowed for remote clusters (allowExec)", kctx.AuthInfo, u.Exec.Command)
		case u.AuthProvider != nil && !p.AllowAuthProvider:
			return nil, fmt.Errorf("kubeconfig user %q uses auth provider %q; not allowed for remote clusters (allowAuthProvider)", kctx.AuthInfo, u.AuthProvider.Name)
		case !p.AllowFiles && (u.ClientCertificate != "" || u.ClientKey != "" || u.TokenFile != ""):
			return nil, fmt.Errorf("kubeconfig user %q refers to files on the broker's disk; not allowed for remote clusters (inline the data, or allowFiles)", kctx.AuthInfo)
		}
	}
	c := kc.Clusters[kctx.Cluster]
	if c == nil {
		return nil, fmt.Errorf("kubeconfig's current context names cluster %q, which does not exist", kctx.Cluster)
	}
	if c.CertificateAuthority != "" && !p.AllowFiles {
		return nil, fmt.Errorf("kubeconfig cluster %q refers to a CA file on the broker's disk; not allowed for remote clusters (inline certificate-authority-data, or allowFiles)", kctx.Cluster)
	}
	if c.InsecureSkipTLSVerify && !p.AllowInsecureTLS {
		return nil, fmt.Errorf("kubeconfig cluster %q sets insecure-skip-tls-verify: true; not allowed for remote clusters (allowInsecureTLS)", kctx.Cluster)
	}
	if c.ProxyURL != "" && !p.AllowProxy {
		return nil, fmt.Errorf("kubeconfig cluster %q sets proxy-url %q; not allowed for remote clusters (allowProxy)", kctx.Cluster, c.ProxyURL)
	}
	if err := checkServer(c.Server, p); err != nil {
		return nil, fmt.Errorf("kubeconfig cluster %q: %w", kctx.Cluster, err)
	}
	rc, err := clientcmd.NewNonInteractiveClientConfig(*kc, ctxName, &clientcmd.ConfigOverrides{}, nil).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	return rc, nil
}

// checkServer refuses a server URL the policy does not allow. The scheme
// must be explicit: without one client-go picks http when no CA or client
// certificate is set. The host is judged as written: an IP literal by its
// address, localhost by its name; any other name is not resolved (the
// answer could change between this check and the connection, and DNS is
// not the broker's to trust either way), so a name that resolves to a
// loopback or link-local address is not caught here.
func checkServer(server string, p KubeconfigPolicy) error {
	u, err := url.Parse(server)
	if err != nil {
		return fmt.Errorf("server %q is not a URL: %w", server, err)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !p.AllowPlaintext {
			return fmt.Errorf("server %q is plaintext http (the bearer token would be sent in clear); not allowed for remote clusters (allowPlaintext)", server)
		}
	default:
		return fmt.Errorf("server %q has no https:// scheme; not allowed for remote clusters", server)
	}
	host := strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
	if host == "" {
		return fmt.Errorf("server %q has no host", server)
	}
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		// RFC 6761: localhost names are loopback whatever DNS says.
		if !p.AllowLoopback {
			return fmt.Errorf("server %q is on localhost; not allowed for remote clusters (allowLoopback)", server)
		}
		return nil
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		// A name. One whose last label is numeric is no DNS name but a
		// legacy address form (127.1, 0x7f000001, 2130706433) that some
		// resolvers turn into an address netip does not parse: refused.
		last := host[strings.LastIndex(host, ".")+1:]
		if last != "" && (strings.HasPrefix(last, "0x") || strings.Trim(last, "0123456789") == "") {
			return fmt.Errorf("server %q has a numeric host that is not a plain IP address; not allowed for remote clusters", server)
		}
		return nil
	}
	addr = addr.Unmap() // ::ffff:127.0.0.1 is 127.0.0.1
	switch {
	case (addr.IsLoopback() || addr.IsUnspecified()) && !p.AllowLoopback:
		// The unspecified address reaches the local host when dialled.
		return fmt.Errorf("server %q is on loopback address %s; not allowed for remote clusters (allowLoopback)", server, addr)
	case (addr.IsLinkLocalUnicast() || addr.IsLinkLocalMulticast()) && !p.AllowLinkLocal:
		return fmt.Errorf("server %q is on link-local address %s (cloud metadata endpoints live there); not allowed for remote clusters (allowLinkLocal)", server, addr)
	}
	return nil
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

// syncSecrets records every remote secret's claims, withdraws those of
// the Secrets gone, and only then reconciles: each cluster goes to the
// oldest Secret claiming it whatever order the events came in, and when
// its owner is deleted or stops claiming it, the next claimant takes it
// over in the same pass.
func (r *Registry) syncSecrets(objs []any, seen map[source]bool) {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	now := map[source]bool{}
	changed := map[string]bool{}
	for _, o := range objs {
		s, ok := o.(*corev1.Secret)
		if !ok {
			continue
		}
		name := s.Namespace + "/" + s.Name
		src := source("secret " + name)
		now[src] = true
		want := map[string]desired{}
		for id, kubeconfig := range s.Data {
			rc, err := RESTConfigFromKubeconfig(kubeconfig, r.cfg.KubeconfigPolicy)
			if err != nil {
				r.log.Error("remote secret refused", "secret", name, "key", id, "error", err)
				continue
			}
			want[id] = desired{kubeconfig: kubeconfig, rc: rc}
		}
		for id := range r.setClaims(src, rank{created: s.CreationTimestamp.Time, name: name}, want) {
			changed[id] = true
		}
	}
	for src := range seen {
		if !now[src] {
			for id := range r.setClaims(src, rank{}, map[string]desired{}) {
				changed[id] = true
			}
		}
	}
	r.reconcile(changed)
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
			r.apply(src, rank{dir: true}, want)
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
