package publish

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

const bundleA = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"

func ns(name string, mut ...func(*corev1.Namespace)) *corev1.Namespace {
	n := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NamespaceStatus{Phase: corev1.NamespaceActive}}
	for _, m := range mut {
		m(n)
	}
	return n
}

func rootCM(namespace string, data map[string]string, mut ...func(*corev1.ConfigMap)) *corev1.ConfigMap {
	c := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: namespace, ResourceVersion: "42"}, Data: data}
	for _, m := range mut {
		m(c)
	}
	return c
}

func TestDecideConfigMap(t *testing.T) {
	now := metav1.NewTime(time.Now())
	mesh := labels.SelectorFromSet(labels.Set{"mesh": "on"})
	kept := func(c *corev1.ConfigMap) {
		c.Labels = map[string]string{"team": "x"}
		c.Annotations = map[string]string{"note": "hand-made"}
	}
	tests := []struct {
		name     string
		ns       *corev1.Namespace
		sel      labels.Selector
		existing *corev1.ConfigMap
		want     action
		// check looks at the object to write.
		check func(t *testing.T, out *corev1.ConfigMap)
	}{
		{name: "namespace gone", ns: nil, want: skip},
		{name: "terminating phase", ns: ns("a", func(n *corev1.Namespace) { n.Status.Phase = corev1.NamespaceTerminating }), want: skip},
		{name: "deletion timestamp", ns: ns("a", func(n *corev1.Namespace) { n.DeletionTimestamp = &now }), want: skip},
		{name: "terminating with a stale ConfigMap is left alone", ns: ns("a", func(n *corev1.Namespace) { n.Status.Phase = corev1.NamespaceTerminating }),
			existing: rootCM("a", map[string]string{DataKey: "old"}), want: skip},
		{name: "not selected", ns: ns("a"), sel: mesh, want: skip},
		{name: "not selected, stale ConfigMap left alone", ns: ns("a"), sel: mesh, existing: rootCM("a", map[string]string{DataKey: "old"}), want: skip},
		{name: "selected, missing", ns: ns("a", func(n *corev1.Namespace) { n.Labels = map[string]string{"mesh": "on"} }), sel: mesh, want: create,
			check: func(t *testing.T, out *corev1.ConfigMap) {
				if out.Namespace != "a" || out.Name != ConfigMapName || out.Data[DataKey] != bundleA || out.Labels["istio.io/config"] != "true" || len(out.Data) != 1 {
					t.Errorf("created %+v", out)
				}
			}},
		{name: "missing", ns: ns("b"), want: create},
		{name: "in sync", ns: ns("a"), existing: rootCM("a", map[string]string{DataKey: bundleA}), want: leave},
		{name: "in sync with other keys", ns: ns("a"), existing: rootCM("a", map[string]string{DataKey: bundleA, "extra": "x"}, kept), want: leave},
		{name: "differs: only root-cert.pem changes", ns: ns("a"), existing: rootCM("a", map[string]string{DataKey: "hand-edited", "extra": "x"}, kept), want: update,
			check: func(t *testing.T, out *corev1.ConfigMap) {
				if out.Data[DataKey] != bundleA || out.Data["extra"] != "x" || len(out.Data) != 2 {
					t.Errorf("data %v", out.Data)
				}
				if out.Labels["team"] != "x" || len(out.Labels) != 1 || out.Annotations["note"] != "hand-made" {
					t.Errorf("labels %v annotations %v: must be kept as they are", out.Labels, out.Annotations)
				}
				if out.ResourceVersion != "42" {
					t.Errorf("resourceVersion %q: the update must be conditional on what was read", out.ResourceVersion)
				}
			}},
		{name: "key missing", ns: ns("a"), existing: rootCM("a", map[string]string{"extra": "x"}), want: update},
		{name: "no data at all", ns: ns("a"), existing: rootCM("a", nil), want: update,
			check: func(t *testing.T, out *corev1.ConfigMap) {
				if out.Data[DataKey] != bundleA {
					t.Errorf("data %v", out.Data)
				}
			}},
		{name: "trailing whitespace differs", ns: ns("a"), existing: rootCM("a", map[string]string{DataKey: bundleA + "\n"}), want: update},
		{name: "in binaryData", ns: ns("a"), existing: rootCM("a", nil, func(c *corev1.ConfigMap) { c.BinaryData = map[string][]byte{DataKey: []byte(bundleA), "bin": {1}} }), want: update,
			check: func(t *testing.T, out *corev1.ConfigMap) {
				if _, ok := out.BinaryData[DataKey]; ok || out.Data[DataKey] != bundleA || len(out.BinaryData["bin"]) != 1 {
					t.Errorf("data %v binaryData %v", out.Data, out.BinaryData)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before *corev1.ConfigMap
			if tt.existing != nil {
				before = tt.existing.DeepCopy()
			}
			got, out := decideConfigMap(tt.ns, tt.sel, tt.existing, []byte(bundleA))
			if got != tt.want {
				t.Fatalf("action %s, want %s", got, tt.want)
			}
			if (out != nil) != (got == create || got == update) {
				t.Fatalf("object to write %v for %s", out, got)
			}
			if tt.check != nil {
				tt.check(t, out)
			}
			if tt.existing != nil && before.String() != tt.existing.String() {
				t.Error("the cached object was modified")
			}
		})
	}
}

func TestDecideCTB(t *testing.T) {
	tests := []struct {
		name     string
		existing *ctbView
		signer   string
		want     action
	}{
		{"absent", nil, "example.com/mesh", create},
		{"in sync", &ctbView{SignerName: "example.com/mesh", TrustBundle: bundleA}, "example.com/mesh", leave},
		{"bundle differs", &ctbView{SignerName: "example.com/mesh", TrustBundle: "old"}, "example.com/mesh", update},
		{"other signer", &ctbView{SignerName: "example.com/other", TrustBundle: bundleA}, "example.com/mesh", refuse},
		{"no signer either side", &ctbView{TrustBundle: "old"}, "", update},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := decideCTB(tt.existing, tt.signer, []byte(bundleA)); got != tt.want {
				t.Errorf("%s, want %s", got, tt.want)
			}
		})
	}
}

func TestLastWriter(t *testing.T) {
	at := func(s int) *metav1.Time { v := metav1.NewTime(time.Unix(int64(s), 0)); return &v }
	fields := func(s string) *metav1.FieldsV1 { return &metav1.FieldsV1{Raw: []byte(s)} }
	tests := []struct {
		name    string
		entries []metav1.ManagedFieldsEntry
		want    string
	}{
		{"none", nil, ""},
		{"only the publisher", []metav1.ManagedFieldsEntry{{Manager: "meshca-broker", Time: at(5)}}, ""},
		{"the one owning root-cert.pem wins over a later one", []metav1.ManagedFieldsEntry{
			{Manager: "pilot-discovery", Operation: "Update", Time: at(1), FieldsV1: fields(`{"f:data":{"f:root-cert.pem":{}}}`)},
			{Manager: "kubectl-label", Operation: "Update", Time: at(9), FieldsV1: fields(`{"f:metadata":{"f:labels":{}}}`)},
			{Manager: "meshca-broker", Operation: "Update", Time: at(10), FieldsV1: fields(`{"f:data":{"f:root-cert.pem":{}}}`)},
		}, "pilot-discovery (Update)"},
		{"latest when none owns it", []metav1.ManagedFieldsEntry{
			{Manager: "a", Time: at(1)}, {Manager: "b", Time: at(3)}, {Manager: "c", Time: at(2)},
		}, "b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := lastWriter(tt.entries, "meshca-broker", DataKey); got != tt.want {
				t.Errorf("%q, want %q", got, tt.want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	base := func() Config { return Config{Clusters: &fakeClusters{}, Bundle: newFakeBundle()} }
	tests := []struct {
		name    string
		mut     func(*Config)
		wantErr string
	}{
		{"defaults", func(*Config) {}, ""},
		{"no clusters", func(c *Config) { c.Clusters = nil }, "Clusters is required"},
		{"no bundle", func(c *Config) { c.Bundle = nil }, "Bundle is required"},
		{"selector", func(c *Config) { c.NamespaceSelector = "mesh in (a,b),!legacy" }, ""},
		{"bad selector", func(c *Config) { c.NamespaceSelector = "mesh in (" }, "namespace selector"},
		{"ctb without signer", func(c *Config) { c.ClusterTrustBundleName = "mesh-roots" }, ""},
		{"ctb without signer with colon", func(c *Config) { c.ClusterTrustBundleName = "a:b" }, "must not contain"},
		{"ctb with signer", func(c *Config) {
			c.ClusterTrustBundleName, c.ClusterTrustBundleSigner = "meshca.example.com:roots:bundle", "meshca.example.com/roots"
		}, ""},
		{"ctb name without the signer prefix", func(c *Config) {
			c.ClusterTrustBundleName, c.ClusterTrustBundleSigner = "bundle", "meshca.example.com/roots"
		}, `must start with "meshca.example.com:roots:"`},
		{"bad signer", func(c *Config) { c.ClusterTrustBundleName, c.ClusterTrustBundleSigner = "x:y:z", "nodomain/roots" }, "want <domain>/<path>"},
		{"signer without a name", func(c *Config) { c.ClusterTrustBundleSigner = "meshca.example.com/roots" }, "no ClusterTrustBundle name"},
		{"bad suffix", func(c *Config) {
			c.ClusterTrustBundleName, c.ClusterTrustBundleSigner = "meshca.example.com:roots:Bad_Name", "meshca.example.com/roots"
		}, "ClusterTrustBundle name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mut(&c)
			_, err := New(c)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}
