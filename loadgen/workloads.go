// Package loadgen drives an Istio CA (the broker, or Istio's own CA server)
// the way a mass restart of pods does, and measures it.
//
// Setup creates N distinct workloads in a real Kubernetes API server: each
// its own ServiceAccount, optionally a Pending pod (spec.nodeName set, no
// kubelet needed) and a real TokenRequest token with audience istio-ca,
// pod-bound when there is a pod. PrepareKeys gives every workload a fresh key
// and CSR outside the timed section. Run then sends one CreateCertificate per
// workload, as the Istio agent does (a fresh TLS connection per workload by
// default, the agent's retry schedule on retryable codes), verifies every
// returned chain and reports throughput, latency percentiles, failures by
// gRPC code and the CPU the CA and the API server spent per certificate.
package loadgen

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/meshca/broker/caclient"
)

// Workload is one pod identity: its service account, its token and, once
// PrepareKeys ran, its key and CSR.
type Workload struct {
	Namespace      string
	ServiceAccount string
	// Pod is the pod the token is bound to ("" when the token is not pod-bound).
	Pod    string
	PodUID types.UID
	Token  string

	// Key and CSRPEM are set by PrepareKeys, fresh for each run: a CA that
	// remembers recent CSRs (the broker joins a retry of the same CSR to the
	// issuance it already made) must not see the same CSR twice.
	Key    crypto.Signer
	CSRPEM string
}

// SPIFFEID is the identity a CA must certify for w in trust domain td.
func (w *Workload) SPIFFEID(td string) string {
	return "spiffe://" + td + "/ns/" + w.Namespace + "/sa/" + w.ServiceAccount
}

// SetupOptions say which workloads to create.
type SetupOptions struct {
	// N is the number of distinct workloads.
	N int
	// Prefix names the namespaces (<prefix>-<i>) and is part of every name,
	// so two setups with different prefixes have distinct identities.
	// Default "meshca-load".
	Prefix string
	// Namespaces spreads the workloads over this many namespaces; 0 gives
	// every workload its own namespace, 1 puts them all in one.
	Namespaces int
	// BoundPods creates a Pending pod per workload (spec.nodeName = NodeName,
	// so no scheduler or kubelet is involved) and binds the token to it.
	// Do not use it on a real cluster whose pod garbage collector deletes
	// pods bound to nodes that do not exist (the tokens then stop working).
	BoundPods bool
	// NodeName for the pods (default "meshca-load-node").
	NodeName string
	// Audiences of the tokens (default [istio-ca]).
	Audiences []string
	// TokenTTL (default 2h; the API server refuses less than 10 minutes).
	TokenTTL time.Duration
	// Concurrency of the API calls (default 32).
	Concurrency int
}

// Set is what Setup created.
type Set struct {
	Workloads []*Workload
	// Namespaces holds every namespace the workloads live in; Created those
	// Setup created (Cleanup deletes only these).
	Namespaces []string
	Created    []string
	// Took is how long Setup ran.
	Took time.Duration
}

func (o *SetupOptions) defaults() {
	if o.Prefix == "" {
		o.Prefix = "meshca-load"
	}
	if o.NodeName == "" {
		o.NodeName = "meshca-load-node"
	}
	if len(o.Audiences) == 0 {
		o.Audiences = []string{"istio-ca"}
	}
	if o.TokenTTL == 0 {
		o.TokenTTL = 2 * time.Hour
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 32
	}
}

// Setup creates o.N workloads through client (which needs rights to create
// namespaces, service accounts, pods and tokens). Objects that already exist
// are reused. Run it once and reuse the Set for several runs.
func Setup(ctx context.Context, client kubernetes.Interface, o SetupOptions) (*Set, error) {
	o.defaults()
	if o.N <= 0 {
		return nil, errors.New("loadgen: N must be positive")
	}
	start := time.Now()
	nns := o.Namespaces
	if nns <= 0 || nns > o.N {
		nns = o.N
	}
	set := &Set{Workloads: make([]*Workload, o.N)}
	for i := 0; i < nns; i++ {
		set.Namespaces = append(set.Namespaces, fmt.Sprintf("%s-%d", o.Prefix, i))
	}
	for i := range set.Workloads {
		w := &Workload{Namespace: set.Namespaces[i%nns], ServiceAccount: fmt.Sprintf("sa-%d", i)}
		if o.BoundPods {
			w.Pod = fmt.Sprintf("pod-%d", i)
		}
		set.Workloads[i] = w
	}

	var mu sync.Mutex
	err := parallel(ctx, len(set.Namespaces), o.Concurrency, func(ctx context.Context, i int) error {
		created, err := ensureNamespace(ctx, client, set.Namespaces[i])
		if created {
			mu.Lock()
			set.Created = append(set.Created, set.Namespaces[i])
			mu.Unlock()
		}
		return err
	})
	if err != nil {
		return set, err
	}
	err = parallel(ctx, o.N, o.Concurrency, func(ctx context.Context, i int) error {
		return setupOne(ctx, client, set.Workloads[i], &o)
	})
	set.Took = time.Since(start)
	return set, err
}

func ensureNamespace(ctx context.Context, client kubernetes.Interface, name string) (bool, error) {
	_, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: name, Labels: map[string]string{"app.kubernetes.io/created-by": "meshca-loadgen"},
	}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("loadgen: creating namespace %s: %w", name, err)
	}
	return true, nil
}

func setupOne(ctx context.Context, client kubernetes.Interface, w *Workload, o *SetupOptions) error {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: w.ServiceAccount}}
	if _, err := client.CoreV1().ServiceAccounts(w.Namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("loadgen: creating service account %s/%s: %w", w.Namespace, w.ServiceAccount, err)
	}
	secs := int64(o.TokenTTL / time.Second)
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: o.Audiences, ExpirationSeconds: &secs}}
	if w.Pod != "" {
		no := false
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: w.Pod, Labels: map[string]string{"app": "meshca-load"}},
			Spec: corev1.PodSpec{
				ServiceAccountName:           w.ServiceAccount,
				AutomountServiceAccountToken: &no,
				NodeName:                     o.NodeName,
				Containers:                   []corev1.Container{{Name: "app", Image: "example.invalid/app:latest"}},
			},
		}
		got, err := client.CoreV1().Pods(w.Namespace).Create(ctx, pod, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			got, err = client.CoreV1().Pods(w.Namespace).Get(ctx, w.Pod, metav1.GetOptions{})
		}
		if err != nil {
			return fmt.Errorf("loadgen: creating pod %s/%s: %w", w.Namespace, w.Pod, err)
		}
		w.PodUID = got.UID
		tr.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: got.Name, UID: got.UID}
	}
	out, err := client.CoreV1().ServiceAccounts(w.Namespace).CreateToken(ctx, w.ServiceAccount, tr, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("loadgen: token for %s/%s: %w", w.Namespace, w.ServiceAccount, err)
	}
	w.Token = out.Status.Token
	return nil
}

// Cleanup deletes the namespaces Setup created (and with them everything
// in them). Namespaces that existed before are left alone.
func (s *Set) Cleanup(ctx context.Context, client kubernetes.Interface) error {
	var errs []error
	for _, ns := range s.Created {
		if err := client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// KeyType is the workload key algorithm.
type KeyType string

// The key types the Istio agent uses: RSA-2048 by default, ECDSA P-256 with
// ECC_SIGNATURE_ALGORITHM=ECDSA (and always for ztunnel).
const (
	ECDSAP256 KeyType = "ECDSA-P256"
	RSA2048   KeyType = "RSA-2048"
)

// ParseKeyType accepts ECDSA-P256 (also ecdsa, p256) and RSA-2048 (also rsa).
func ParseKeyType(s string) (KeyType, error) {
	switch s {
	case "ECDSA-P256", "ecdsa", "ECDSA", "p256", "P-256":
		return ECDSAP256, nil
	case "RSA-2048", "rsa", "RSA":
		return RSA2048, nil
	}
	return "", fmt.Errorf("unknown key type %q (ECDSA-P256 or RSA-2048)", s)
}

// PrepareKeys gives every workload a fresh key of type kt and a CSR naming
// its SPIFFE ID in trust domain td, as the agent's CSR does, using all CPUs.
// Call it before each Run: key generation is not part of what is measured.
func PrepareKeys(ctx context.Context, ws []*Workload, kt KeyType, td string) error {
	if kt != ECDSAP256 && kt != RSA2048 {
		return fmt.Errorf("loadgen: unknown key type %q", kt)
	}
	return parallel(ctx, len(ws), runtime.NumCPU(), func(_ context.Context, i int) error {
		key, err := caclient.NewKey(kt == ECDSAP256)
		if err != nil {
			return err
		}
		csr, err := caclient.CSR(key, ws[i].SPIFFEID(td))
		if err != nil {
			return err
		}
		ws[i].Key, ws[i].CSRPEM = key, csr
		return nil
	})
}

// parallel runs f(0..n-1) on up to c goroutines, stopping at the first error.
func parallel(ctx context.Context, n, c int, f func(context.Context, int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(c, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := f(ctx, i); err != nil {
					cancel(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return context.Cause(ctx)
}
