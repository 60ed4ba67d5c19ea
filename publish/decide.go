package publish

import (
	"bytes"
	"fmt"
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// action is what the publisher does about one object.
type action int

const (
	// leave: in sync, nothing to write.
	leave action = iota
	// create the object.
	create
	// update only the bundle field of the existing object.
	update
	// skip: out of scope (namespace gone, terminating or not selected);
	// nothing is written and an existing object is left as it is.
	skip
	// refuse: the existing object cannot be brought in sync (a
	// ClusterTrustBundle with another, immutable, signer name).
	refuse
)

func (a action) String() string {
	return [...]string{"leave", "create", "update", "skip", "refuse"}[a]
}

// configMapLabels are set when the publisher creates the ConfigMap, as
// istiod's namespace controller does; an existing ConfigMap's labels are
// never touched.
var configMapLabels = map[string]string{"istio.io/config": "true"}

// decideConfigMap compares what namespace ns should hold with what it
// holds. ns nil means the namespace is gone; existing nil means there is
// no ConfigMap. For create and update it returns the object to write: a
// new ConfigMap, or a copy of existing with only root-cert.pem changed
// (every other key, label and annotation kept; its resourceVersion kept
// so the write fails rather than overwrite a change it did not see).
func decideConfigMap(ns *corev1.Namespace, sel labels.Selector, existing *corev1.ConfigMap, bundle []byte) (action, *corev1.ConfigMap) {
	if !inScope(ns, sel) {
		return skip, nil
	}
	want := string(bundle)
	if existing == nil {
		return create, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: ns.Name, Labels: maps.Clone(configMapLabels)},
			Data:       map[string]string{DataKey: want},
		}
	}
	_, inBinary := existing.BinaryData[DataKey]
	if got, ok := existing.Data[DataKey]; ok && got == want && !inBinary {
		return leave, nil
	}
	out := existing.DeepCopy()
	if out.Data == nil {
		out.Data = map[string]string{}
	}
	out.Data[DataKey] = want
	// A key may not be in both data and binaryData.
	delete(out.BinaryData, DataKey)
	return update, out
}

// inScope: the namespace exists, is not being deleted, and matches the
// selector (every namespace when sel is nil).
func inScope(ns *corev1.Namespace, sel labels.Selector) bool {
	return ns != nil && !terminating(ns) && (sel == nil || sel.Matches(labels.Set(ns.Labels)))
}

// NamespaceFilter reports which namespaces a publisher configured with
// selector (kubectl -l syntax, "" for all) writes the bundle into, so
// that what checks on the publishing (broker trust status) count is what
// the publisher serves.
func NamespaceFilter(selector string) (func(*corev1.Namespace) bool, error) {
	var sel labels.Selector
	if selector != "" {
		s, err := labels.Parse(selector)
		if err != nil {
			return nil, fmt.Errorf("namespace selector %q: %w", selector, err)
		}
		sel = s
	}
	return func(ns *corev1.Namespace) bool { return inScope(ns, sel) }, nil
}

// terminating: a namespace being deleted gets nothing new (the API server
// would refuse it anyway).
func terminating(ns *corev1.Namespace) bool {
	return ns.DeletionTimestamp != nil || ns.Status.Phase == corev1.NamespaceTerminating
}

// ctbView is what the publisher reads of a ClusterTrustBundle, whichever
// API version served it.
type ctbView struct {
	Name, SignerName, TrustBundle string
	ResourceVersion               string
	ManagedFields                 []metav1.ManagedFieldsEntry
}

// decideCTB compares the ClusterTrustBundle with the bundle (existing nil:
// absent).
func decideCTB(existing *ctbView, signer string, bundle []byte) action {
	switch {
	case existing == nil:
		return create
	case existing.SignerName != signer:
		return refuse
	case existing.TrustBundle != string(bundle):
		return update
	default:
		return leave
	}
}

// lastWriter names who last wrote an object, from its managedFields: the
// most recent entry that is not the publisher's own, preferring one that
// owns the bundle field. Empty when unknown.
func lastWriter(entries []metav1.ManagedFieldsEntry, self, field string) string {
	var best *metav1.ManagedFieldsEntry
	score := func(e *metav1.ManagedFieldsEntry) (bool, int64) {
		owns := e.FieldsV1 != nil && containsField(e.FieldsV1.Raw, field)
		var t int64
		if e.Time != nil {
			t = e.Time.UnixNano()
		}
		return owns, t
	}
	for i := range entries {
		e := &entries[i]
		if e.Manager == self || e.Subresource != "" {
			continue
		}
		if best == nil {
			best = e
			continue
		}
		bo, bt := score(best)
		eo, et := score(e)
		if (eo && !bo) || (eo == bo && et > bt) {
			best = e
		}
	}
	if best == nil {
		return ""
	}
	if best.Operation != "" {
		return best.Manager + " (" + string(best.Operation) + ")"
	}
	return best.Manager
}

func containsField(raw []byte, field string) bool {
	return field != "" && bytes.Contains(raw, []byte(`"f:`+field+`"`))
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
