package publish

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/meshca/broker/cluster"
	"github.com/meshca/broker/integration/testenv"
	"github.com/meshca/broker/trust"
)

// TestPublishBench measures, against a real kube-apiserver holding
// MESHCA_PUBLISHBENCH namespaces (e.g. 1000): how long the publisher takes
// to publish to all of them; then, creating new namespaces one at a time
// (MESHCA_PUBLISHBENCH_NEW, default 200), the time from the namespace's
// create call to its ConfigMap being seen by the test's informer (p50, p99, max;
// target p99 <= 2s); the writes per minute at steady state
// (MESHCA_PUBLISHBENCH_STEADY, default 60s); and how long a bundle change
// takes to reach every namespace.
//
//	MESHCA_INTEGRATION=1 MESHCA_PUBLISHBENCH=1000 go test -run TestPublishBench -v ./publish/
func TestPublishBench(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("MESHCA_PUBLISHBENCH"))
	if n <= 0 {
		t.Skip("set MESHCA_PUBLISHBENCH=<namespaces> (and MESHCA_INTEGRATION=1) to run the publisher measurement")
	}
	newCount := envInt("MESHCA_PUBLISHBENCH_NEW", 200)
	steady, err := time.ParseDuration(envStr("MESHCA_PUBLISHBENCH_STEADY", "60s"))
	if err != nil {
		t.Fatal(err)
	}
	k := testenv.StartKube(t)

	// n namespaces, 16 at a time.
	start := time.Now()
	names := make(chan string)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range names {
				createNamespace(t, k.Client, name, nil)
			}
		}()
	}
	for i := range n {
		names <- fmt.Sprintf("bench-%05d", i)
	}
	close(names)
	wg.Wait()
	total := len(allNamespaces(t, k.Client))
	t.Logf("%d namespaces created in %s (%d in all)", n, time.Since(start).Round(time.Millisecond), total)

	// Every ConfigMap appearance, as a watch sees it.
	seen := map[string]time.Time{}
	var mu sync.Mutex
	cond := sync.NewCond(&mu)
	// An informer rather than a bare watch: it relists when a watch is
	// refused (etcd 3.4 cannot answer the API server's progress requests,
	// so a watch "from now" may be refused as "Too large resource
	// version").
	inf := coreinformers.NewFilteredConfigMapInformer(k.Client, "", 0, cache.Indexers{},
		func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + ConfigMapName })
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: func(obj any) {
		if cm, ok := obj.(*corev1.ConfigMap); ok {
			mu.Lock()
			if seen[cm.Namespace].IsZero() {
				seen[cm.Namespace] = time.Now()
			}
			cond.Broadcast()
			mu.Unlock()
		}
	}}); err != nil {
		t.Fatal(err)
	}
	stopInf := make(chan struct{})
	defer close(stopInf)
	go inf.Run(stopInf)
	cache.WaitForCacheSync(stopInf, inf.HasSynced)

	reg, err := cluster.NewRegistry(cluster.RegistryConfig{LocalID: "bench", Local: k.RESTConfig,
		Options: cluster.Options{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local"), Log: quietLog()}})
	if err != nil {
		t.Fatal(err)
	}
	runRegistry(t, reg)
	roots := &settableRoots{}
	rootA, rootB := testenv.NewCA(t, "root A"), testenv.NewCA(t, "root B")
	roots.set(rootA.Cert)
	bundle, err := trust.LoadBundle(context.Background(), trust.BundleConfig{Backend: roots.source, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	metrics := prometheus.NewRegistry()
	_, log := newLogRecorder(t, slog.LevelWarn)
	writes := func() float64 { return counter(t, metrics, "meshca_trust_publish_writes_total", nil) }

	start = time.Now()
	startPublisher(t, Config{Clusters: reg, Bundle: bundle, Registerer: metrics, Log: log})
	mu.Lock()
	for len(seen) < total {
		if time.Since(start) > 5*time.Minute {
			t.Fatalf("only %d of %d namespaces published after 5 minutes", len(seen), total)
		}
		waitCond(cond, time.Second)
	}
	mu.Unlock()
	initial := time.Since(start)
	for t0 := time.Now(); writes() < float64(total) && time.Since(t0) < 2*time.Second; {
		time.Sleep(10 * time.Millisecond) // the last write's count lands after its response
	}
	t.Logf("initial publish: %d namespaces in %s (%.0f ConfigMaps/s), %v writes", total, initial.Round(time.Millisecond), float64(total)/initial.Seconds(), writes())

	// New namespaces one at a time.
	lat := make([]time.Duration, 0, newCount)
	for i := range newCount {
		name := fmt.Sprintf("new-%05d", i)
		t0 := time.Now()
		createNamespace(t, k.Client, name, nil)
		mu.Lock()
		for seen[name].IsZero() {
			if time.Since(t0) > 30*time.Second {
				mu.Unlock()
				t.Fatalf("namespace %s: no ConfigMap after 30s", name)
			}
			waitCond(cond, 100*time.Millisecond)
		}
		lat = append(lat, seen[name].Sub(t0))
		mu.Unlock()
	}
	slices.Sort(lat)
	p := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	t.Logf("new namespace -> its ConfigMap seen by an informer of the test, %d namespaces created one at a time among %d: p50 %s, p90 %s, p99 %s, max %s",
		newCount, total+newCount, p(0.50).Round(100*time.Microsecond), p(0.90).Round(100*time.Microsecond), p(0.99).Round(100*time.Microsecond), lat[len(lat)-1].Round(100*time.Microsecond))
	if p(0.99) > 2*time.Second {
		t.Errorf("p99 %s, target <= 2s", p(0.99))
	}

	// Steady state.
	time.Sleep(time.Second)
	rv0, w0 := resourceVersions(t, k.Client), writes()
	time.Sleep(steady)
	dw := writes() - w0
	unchanged := maps.Equal(rv0, resourceVersions(t, k.Client))
	t.Logf("steady state over %s with %d ConfigMaps: %v writes (%.1f writes/minute); resourceVersions unchanged: %v", steady, len(rv0), dw, dw/steady.Minutes(), unchanged)
	if dw != 0 || !unchanged {
		t.Errorf("%v writes at steady state, want 0", dw)
	}

	// A bundle change reaches every namespace.
	w1 := writes()
	roots.set(rootA.Cert, rootB.Cert)
	changed := time.Now()
	if err := bundle.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := string(bundle.Current().PEM)
	for {
		l, err := k.Client.CoreV1().ConfigMaps("").List(context.Background(), metav1.ListOptions{FieldSelector: "metadata.name=" + ConfigMapName})
		if err != nil {
			t.Fatal(err)
		}
		done := 0
		for _, cm := range l.Items {
			if cm.Data[DataKey] == want {
				done++
			}
		}
		if done == total+newCount {
			break
		}
		if time.Since(changed) > 5*time.Minute {
			t.Fatalf("bundle change: %d of %d after 5 minutes", done, total+newCount)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("bundle change: %d ConfigMaps updated in %s, %v writes", total+newCount, time.Since(changed).Round(time.Millisecond), writes()-w1)
}

// waitCond waits on c (its lock held) for at most d.
func waitCond(c *sync.Cond, d time.Duration) {
	t := time.AfterFunc(d, c.Broadcast)
	c.Wait()
	t.Stop()
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func envStr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
