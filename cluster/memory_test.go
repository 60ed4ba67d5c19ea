package cluster

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshca/broker/integration/testenv"
)

// TestInformerMemoryPerPod measures what the cluster view costs per pod:
// N realistic pods (labels, annotations, two containers with env and
// resources, as pods have) in a real API server, the heap before and after
// the view syncs. Not part of the suite (it creates thousands of objects):
//
//	MESHCA_MEMBENCH=10000 MESHCA_INTEGRATION=1 go test -run TestInformerMemoryPerPod -v ./cluster
func TestInformerMemoryPerPod(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("MESHCA_MEMBENCH"))
	if n <= 0 {
		t.Skip("set MESHCA_MEMBENCH=<pods> to measure")
	}
	kube := testenv.StartKube(t)
	kube.CreateNamespace(t, "load")
	kube.CreateServiceAccount(t, "load", "web")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 16 {
				if _, err := kube.Client.CoreV1().Pods("load").Create(ctx, realisticPod(i), metav1.CreateOptions{}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("created %d pods in %s", n, time.Since(start).Round(time.Second))

	before := heap()
	c, err := New("load", kube.RESTConfig, Options{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		t.Fatal(err)
	}
	c.Start()
	defer c.Stop()
	sctx, scancel := context.WithTimeout(ctx, 5*time.Minute)
	defer scancel()
	if !c.WaitSynced(sctx) {
		t.Fatal("not synced")
	}
	pods, _ := c.Counts()
	after := heap()
	per := float64(after-before) / float64(pods)
	t.Logf("%d pods cached: heap %d -> %d bytes, %.0f bytes per pod", pods, before, after, per)
	if pods != n {
		t.Fatalf("%d pods cached, want %d", pods, n)
	}
}

func heap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func realisticPod(i int) *corev1.Pod {
	name := fmt.Sprintf("web-%05d-7f9c8d6b5-x%03d", i, i%1000)
	env := []corev1.EnvVar{{Name: "POD_NAME", Value: name}, {Name: "LOG_LEVEL", Value: "info"}, {Name: "UPSTREAM", Value: "http://backend.shop.svc.cluster.local:8080"}}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Labels:      map[string]string{"app": "web", "version": "v2", "pod-template-hash": "7f9c8d6b5", "security.istio.io/tlsMode": "istio"},
			Annotations: map[string]string{"prometheus.io/scrape": "true", "sidecar.istio.io/status": `{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["istio-envoy","istio-data","istio-podinfo","istio-token","istiod-ca-cert"]}`},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: "web",
			NodeName:           fmt.Sprintf("node-%03d", i%200),
			Containers: []corev1.Container{
				{Name: "web", Image: "registry.example/web:2.14.1", Env: env, Args: []string{"--port=8080", "--metrics=9090"}},
				{Name: "istio-proxy", Image: "docker.io/istio/proxyv2:1.29.0", Args: []string{"proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local"}, Env: env},
			},
		},
	}
}
