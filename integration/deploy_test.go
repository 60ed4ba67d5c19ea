package integration

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
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
	for _, file := range []string{"../deploy/broker.yaml", "../deploy/remote-reader.yaml"} {
		objs := applyManifest(t, kube, file, true)
		if len(objs) < 4 {
			t.Fatalf("only %d objects in %s", len(objs), file)
		}
		for _, obj := range objs {
			if obj.GetKind() != "ConfigMap" {
				continue
			}
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
}

// applyManifest creates every object of a YAML file in kube (strict field
// validation; only a server-side dry run when dryRun) and returns them.
func applyManifest(t testing.TB, kube *testenv.Kube, path string, dryRun bool) []*unstructured.Unstructured {
	t.Helper()
	raw, err := os.ReadFile(path)
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
	opts := metav1.CreateOptions{FieldValidation: "Strict"}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	var out []*unstructured.Unstructured
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
		gvk := obj.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s: %v", gvk, err)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if obj.GetNamespace() != "" {
			ri = dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
		}
		if _, err := ri.Create(ctx, obj, opts); err != nil {
			t.Errorf("%s: %s %s: %v", path, gvk.Kind, obj.GetName(), err)
		}
		out = append(out, obj)
	}
	return out
}

// TestDeployRBACNamesWhatTheBrokerWrites: applied for real, deploy/'s RBAC
// lets the broker's service account update istiod's Secret and its own
// Lease, and no other Secret or Lease in its namespace, while it still
// reads remote secrets (the API server's own authorizer decides).
func TestDeployRBACNamesWhatTheBrokerWrites(t *testing.T) {
	kube := testenv.StartKube(t)
	kube.CreateNamespace(t, "istio-system")
	applyManifest(t, kube, "../deploy/broker.yaml", false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	user := "system:serviceaccount:istio-system:meshca-broker"
	for _, tc := range []struct {
		verb, group, resource, name string
		allowed                     bool
	}{
		{"update", "", "secrets", "istiod-tls", true},
		{"update", "", "secrets", "istio-ca-secret", false},
		{"update", "", "secrets", "cacerts", false},
		{"create", "", "secrets", "", true},
		{"list", "", "secrets", "", true},
		{"watch", "", "secrets", "", true},
		{"delete", "", "secrets", "istiod-tls", false},
		{"get", "coordination.k8s.io", "leases", "meshca-broker", true},
		{"update", "coordination.k8s.io", "leases", "meshca-broker", true},
		{"update", "coordination.k8s.io", "leases", "istio-leader", false},
		{"create", "coordination.k8s.io", "leases", "", true},
	} {
		sar, err := kube.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:               user,
			Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:istio-system", "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: "istio-system", Verb: tc.verb, Group: tc.group, Resource: tc.resource, Name: tc.name},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sar.Status.Allowed != tc.allowed {
			t.Errorf("%s %s/%s %q: allowed=%v, want %v (%s)", tc.verb, tc.group, tc.resource, tc.name, sar.Status.Allowed, tc.allowed, sar.Status.Reason)
		}
	}
}
