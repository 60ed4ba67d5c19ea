package integration

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/meshca/broker/config"
	"github.com/meshca/broker/integration/testenv"

	_ "github.com/meshca/broker/backends/all"
)

// TestDeployManifestsAreAcceptedByTheAPIServer creates every object in
// deploy/ on a real API server (server-side dry run, full validation) and
// checks the broker configuration they carry is valid.
func TestDeployManifestsAreAcceptedByTheAPIServer(t *testing.T) {
	kube := testenv.StartKube(t)
	kube.CreateNamespace(t, "istio-system")
	raw, err := os.ReadFile("../deploy/broker.yaml")
	if err != nil {
		t.Fatal(err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(kube.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	groups, err := restmapper.GetAPIGroupResources(disc)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDiscoveryRESTMapper(groups)
	dyn, err := dynamic.NewForConfig(kube.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	var n int
	for {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatal(err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		n++
		gvk := obj.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s: %v", gvk, err)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if obj.GetNamespace() != "" {
			ri = dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
		}
		if _, err := ri.Create(ctx, obj, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"}); err != nil {
			t.Errorf("%s %s: %v", gvk.Kind, obj.GetName(), err)
		}
		if gvk.Kind == "ConfigMap" {
			data, _, _ := unstructured.NestedStringMap(obj.Object, "data")
			cfg, err := config.Parse([]byte(data["config.yaml"]))
			if err != nil {
				t.Fatal(err)
			}
			cfg.ApplyDefaults()
			if err := cfg.Validate(); err != nil {
				t.Errorf("the ConfigMap's config.yaml: %v", err)
			}
		}
	}
	if n < 5 {
		t.Fatalf("only %d objects in deploy/broker.yaml", n)
	}
}
