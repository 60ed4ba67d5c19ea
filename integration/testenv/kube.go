package testenv

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// DefaultIssuer is the service-account token issuer of a cluster started
// without KubeIssuer.
const DefaultIssuer = "https://kubernetes.default.svc.cluster.local"

// IstioCAAudience is the token audience Istio agents request.
const IstioCAAudience = "istio-ca"

// Kube is a kube-apiserver (no controller-manager, scheduler or kubelet) on
// 127.0.0.1 backed by an Etcd. Several Kubes may share one Etcd: each has
// its own --etcd-prefix and service-account signing key, so they behave as
// independent clusters that reject each other's tokens.
type Kube struct {
	// Name identifies the cluster (KubeName; default "cluster1", "cluster2"...).
	Name string
	// URL is https://127.0.0.1:PORT.
	URL string
	// RESTConfig authenticates as an admin (client certificate in group system:masters).
	RESTConfig *rest.Config
	// Client is a clientset built from RESTConfig.
	Client kubernetes.Interface
	// Kubeconfig is the path of an admin kubeconfig file for this cluster.
	Kubeconfig string
	// Issuer is the service-account token issuer (--service-account-issuer).
	Issuer string
	// APIAudiences are the --api-audiences (Issuer and istio-ca by default).
	APIAudiences []string
	// CAPEM is the CA of the API server's serving certificate.
	CAPEM []byte
	// ServiceAccountPublicKeyPEM is the PKIX public key verifying the cluster's
	// service-account tokens (RSA 2048, RS256); ServiceAccountKeyFile its path.
	ServiceAccountPublicKeyPEM []byte
	ServiceAccountKeyFile      string
	ServiceAccountPublicKey    *rsa.PublicKey
	// Etcd backs this cluster under EtcdPrefix.
	Etcd       *Etcd
	EtcdPrefix string

	proc *process
	ca   *CA
	dir  string
}

type kubeConfig struct {
	etcd      *Etcd
	name      string
	issuer    string
	audiences []string
	extraArgs []string
}

// KubeOption configures StartKube.
type KubeOption func(*kubeConfig)

// KubeEtcd makes the cluster use e (with its own prefix) instead of starting
// its own etcd. Pass the same Etcd to several StartKube calls for a multi-cluster setup.
func KubeEtcd(e *Etcd) KubeOption { return func(c *kubeConfig) { c.etcd = e } }

// KubeName names the cluster (used in the etcd prefix and file names).
func KubeName(name string) KubeOption { return func(c *kubeConfig) { c.name = name } }

// KubeIssuer sets --service-account-issuer (default DefaultIssuer).
func KubeIssuer(issuer string) KubeOption { return func(c *kubeConfig) { c.issuer = issuer } }

// KubeAPIAudiences sets --api-audiences (default: the issuer and istio-ca).
func KubeAPIAudiences(aud ...string) KubeOption {
	return func(c *kubeConfig) { c.audiences = aud }
}

// KubeArgs appends raw kube-apiserver flags (later flags win).
func KubeArgs(args ...string) KubeOption {
	return func(c *kubeConfig) { c.extraArgs = append(c.extraArgs, args...) }
}

var clusterSeq = newCounter()

// StartKube starts kube-apiserver (binary "kube-apiserver" from ToolsDir),
// waits for /readyz and the default namespace, and stops it when the test ends.
// Without KubeEtcd it starts its own etcd.
func StartKube(t testing.TB, opts ...KubeOption) *Kube {
	t.Helper()
	bin := Tool(t, "kube-apiserver")
	cfg := kubeConfig{}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.etcd == nil {
		cfg.etcd = StartEtcd(t)
	}
	n := clusterSeq.next()
	if cfg.name == "" {
		cfg.name = fmt.Sprintf("cluster%d", n)
	}
	if cfg.issuer == "" {
		cfg.issuer = DefaultIssuer
	}
	if cfg.audiences == nil {
		cfg.audiences = []string{cfg.issuer, IstioCAAudience}
	}
	dir := t.TempDir()
	k := &Kube{
		Name:         cfg.name,
		Issuer:       cfg.issuer,
		APIAudiences: cfg.audiences,
		Etcd:         cfg.etcd,
		EtcdPrefix:   fmt.Sprintf("/meshca-testenv/%s-%d-%d", cfg.name, n, time.Now().UnixNano()),
		dir:          dir,
	}

	// Serving and client PKI.
	k.ca = NewCA(t, "kube-ca "+cfg.name)
	k.CAPEM = k.ca.CertPEM
	servingCert, servingKey := k.ca.Issue(t, LeafOptions{
		CommonName: "kube-apiserver",
		DNSNames:   []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		IPs:        []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")},
		Server:     true,
	})
	adminCert, adminKey := k.ca.Issue(t, LeafOptions{CommonName: "admin", Organization: []string{"system:masters"}, Client: true})
	caFile := writeFile(t, dir, "ca.crt", k.CAPEM)
	certFile := writeFile(t, dir, "serving.crt", servingCert)
	keyFile := writeFile(t, dir, "serving.key", servingKey)

	// Service-account signing key, distinct per cluster.
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	k.ServiceAccountPublicKey = &saKey.PublicKey
	k.ServiceAccountPublicKeyPEM = pemEncode("PUBLIC KEY", pubDER)
	k.ServiceAccountKeyFile = writeFile(t, dir, "sa.pub", k.ServiceAccountPublicKeyPEM)
	saSigningFile := writeFile(t, dir, "sa.key", pemEncode("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey)))

	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port := FreePort(t)
		k.URL = fmt.Sprintf("https://127.0.0.1:%d", port)
		args := []string{
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--secure-port=" + itoa(port),
			"--etcd-servers=" + cfg.etcd.Endpoint,
			"--etcd-prefix=" + k.EtcdPrefix,
			"--tls-cert-file=" + certFile,
			"--tls-private-key-file=" + keyFile,
			"--client-ca-file=" + caFile,
			"--service-account-issuer=" + cfg.issuer,
			"--service-account-key-file=" + k.ServiceAccountKeyFile,
			"--service-account-signing-key-file=" + saSigningFile,
			"--api-audiences=" + strings.Join(cfg.audiences, ","),
			"--authorization-mode=RBAC",
			"--service-cluster-ip-range=10.0.0.0/24",
			"--cert-dir=" + filepath.Join(dir, "cert-dir"),
			"--endpoint-reconciler-type=none",
			"--enable-priority-and-fairness=false",
			"--profiling=false",
			"--v=1",
		}
		args = append(args, cfg.extraArgs...)
		k.proc = newProcess(t, fmt.Sprintf("kube-apiserver-%s-%d", cfg.name, attempt), bin, args, nil, dir)
		if err := k.proc.start(); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		k.RESTConfig = &rest.Config{
			Host: k.URL,
			TLSClientConfig: rest.TLSClientConfig{
				CAData:   k.CAPEM,
				CertData: adminCert,
				KeyData:  adminKey,
			},
			QPS:   1000,
			Burst: 2000,
		}
		k.Client, err = kubernetes.NewForConfig(k.RESTConfig)
		if err != nil {
			t.Fatal(err)
		}
		lastErr = k.proc.waitReady(90*time.Second, k.ready)
		if lastErr == nil {
			break
		}
		k.proc.stop()
		if !k.proc.addrInUse() {
			break
		}
	}
	if lastErr != nil {
		t.Fatalf("testenv: kube-apiserver: %v", lastErr)
	}
	k.Kubeconfig = k.writeKubeconfig(t, "admin.kubeconfig", map[string]string{
		"client-certificate-data": base64.StdEncoding.EncodeToString(adminCert),
		"client-key-data":         base64.StdEncoding.EncodeToString(adminKey),
	})
	return k
}

func (k *Kube) ready(ctx context.Context) error {
	body, err := k.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("readyz: %v: %s", err, body)
	}
	if _, err := k.Client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err != nil {
		return fmt.Errorf("default namespace: %v", err)
	}
	return nil
}

// writeKubeconfig writes a kubeconfig with the given user fields.
func (k *Kube) writeKubeconfig(t testing.TB, name string, user map[string]string) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Config\nclusters:\n- name: %s\n  cluster:\n    server: %s\n    certificate-authority-data: %s\n",
		k.Name, k.URL, base64.StdEncoding.EncodeToString(k.CAPEM))
	fmt.Fprintf(&b, "users:\n- name: %s\n  user:\n", name)
	for key, v := range user {
		fmt.Fprintf(&b, "    %s: %q\n", key, v)
	}
	fmt.Fprintf(&b, "contexts:\n- name: %s\n  context:\n    cluster: %s\n    user: %s\ncurrent-context: %s\n", k.Name, k.Name, name, k.Name)
	return writeFile(t, k.dir, name, []byte(b.String()))
}

// KubeconfigForToken writes a kubeconfig authenticating with a bearer token
// (e.g. a service account's, to run the broker with limited RBAC) and returns its path.
func (k *Kube) KubeconfigForToken(t testing.TB, token string) string {
	t.Helper()
	return k.writeKubeconfig(t, fmt.Sprintf("token-%d.kubeconfig", clusterSeq.next()), map[string]string{"token": token})
}

// RESTConfigForToken returns a rest.Config authenticating with a bearer token.
func (k *Kube) RESTConfigForToken(token string) *rest.Config {
	return &rest.Config{Host: k.URL, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: k.CAPEM}}
}

func ctxT() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

// CreateNamespace creates a namespace and its "default" service account
// (no controller-manager runs to create it). Existing objects are fine.
func (k *Kube) CreateNamespace(t testing.TB, ns string) *corev1.Namespace {
	t.Helper()
	ctx, cancel := ctxT()
	defer cancel()
	obj, err := k.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		obj, err = k.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	}
	if err != nil {
		t.Fatalf("testenv: create namespace %s: %v", ns, err)
	}
	k.CreateServiceAccount(t, ns, "default")
	return obj
}

// CreateServiceAccount creates a service account (existing is fine).
func (k *Kube) CreateServiceAccount(t testing.TB, ns, name string) *corev1.ServiceAccount {
	t.Helper()
	ctx, cancel := ctxT()
	defer cancel()
	sa, err := k.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		sa, err = k.Client.CoreV1().ServiceAccounts(ns).Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		t.Fatalf("testenv: create service account %s/%s: %v", ns, name, err)
	}
	return sa
}

// CreatePod creates a pod running as service account sa ("default" if
// empty), already bound to a node (spec.nodeName) so no scheduler or kubelet
// is involved; it stays Pending, which is enough for bound tokens and informers.
func (k *Kube) CreatePod(t testing.TB, ns, name, sa string) *corev1.Pod {
	t.Helper()
	return k.CreatePodOnNode(t, ns, name, sa, "testenv-node")
}

// CreatePodOnNode is CreatePod on the named node.
func (k *Kube) CreatePodOnNode(t testing.TB, ns, name, sa, node string) *corev1.Pod {
	t.Helper()
	if sa == "" {
		sa = "default"
	}
	ctx, cancel := ctxT()
	defer cancel()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			NodeName:           node,
			Containers:         []corev1.Container{{Name: "app", Image: "example.invalid/app:latest"}},
		},
	}
	obj, err := k.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("testenv: create pod %s/%s: %v", ns, name, err)
	}
	return obj
}

// DeletePod force-deletes a pod (grace period 0: without a kubelet a graceful
// deletion would never finish).
func (k *Kube) DeletePod(t testing.TB, ns, name string) {
	t.Helper()
	ctx, cancel := ctxT()
	defer cancel()
	zero := int64(0)
	if err := k.Client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("testenv: delete pod %s/%s: %v", ns, name, err)
	}
}

// Token requests a service-account token via the TokenRequest API.
// ttl 0 means one hour (the API server refuses less than 10 minutes).
// When boundPod is non-empty the token is bound to that pod (its UID), and
// stops being accepted once the pod is deleted.
func (k *Kube) Token(ctx context.Context, ns, sa string, audiences []string, ttl time.Duration, boundPod string) (string, error) {
	if ttl == 0 {
		ttl = time.Hour
	}
	secs := int64(ttl / time.Second)
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: &secs}}
	if boundPod != "" {
		pod, err := k.Client.CoreV1().Pods(ns).Get(ctx, boundPod, metav1.GetOptions{})
		if err != nil {
			return "", fmt.Errorf("bound pod: %w", err)
		}
		tr.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	out, err := k.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, tr, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	return out.Status.Token, nil
}

// TokenReview reviews a token as the admin, with the given audiences (nil:
// the API server's own). A refused token is not an error: see Status.Authenticated/Error.
func (k *Kube) TokenReview(ctx context.Context, token string, audiences []string) (*authenticationv1.TokenReviewStatus, error) {
	tr, err := k.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	return &tr.Status, nil
}

// JWKS returns the cluster's service-account JSON Web Key Set
// (/openid/v1/jwks) as served by the API server.
func (k *Kube) JWKS(ctx context.Context) ([]byte, error) {
	return k.Client.Discovery().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
}

// OpenIDConfiguration returns /.well-known/openid-configuration.
func (k *Kube) OpenIDConfiguration(ctx context.Context) ([]byte, error) {
	return k.Client.Discovery().RESTClient().Get().AbsPath("/.well-known/openid-configuration").DoRaw(ctx)
}

// HTTPClient returns an admin HTTP client for raw requests to URL.
func (k *Kube) HTTPClient() (*http.Client, error) { return rest.HTTPClientFor(k.RESTConfig) }

// Stop stops the API server (also done automatically at the end of the test).
func (k *Kube) Stop() { k.proc.stop() }

// Log returns the API server's output so far.
func (k *Kube) Log() string { return k.proc.log() }

// PID is the kube-apiserver's process ID (e.g. for CPU accounting from /proc/<pid>/stat).
func (k *Kube) PID() int { return k.proc.pid() }
