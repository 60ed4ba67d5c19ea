package publish

import (
	"context"
	"fmt"
	"slices"
	"time"

	certv1alpha1 "k8s.io/api/certificates/v1alpha1"
	certv1beta1 "k8s.io/api/certificates/v1beta1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	certinformersv1alpha1 "k8s.io/client-go/informers/certificates/v1alpha1"
	certinformersv1beta1 "k8s.io/client-go/informers/certificates/v1beta1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// ctbVersions are the certificates.k8s.io versions serving
// ClusterTrustBundle that the publisher can write, preferred first.
var ctbVersions = []string{"v1beta1", "v1alpha1"}

// ctbAPI is one served version of ClusterTrustBundle.
type ctbAPI struct {
	version  string
	informer cache.SharedIndexInformer
	view     func(obj any) (*ctbView, bool)
	create   func(ctx context.Context, name, signer, bundle string, opts metav1.CreateOptions) (string, error)
	// update sets spec.trustBundle on the cached object obj (everything
	// else kept, its resourceVersion included).
	update func(ctx context.Context, obj any, bundle string, opts metav1.UpdateOptions) (string, error)
}

// servedCTBVersion asks discovery which version of ClusterTrustBundle the
// cluster serves: "" when none (a NotFound group version is "not served";
// any other error is returned, to try again).
func servedCTBVersion(ctx context.Context, client kubernetes.Interface) (string, error) {
	for _, v := range ctbVersions {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		list, err := client.Discovery().ServerResourcesForGroupVersion("certificates.k8s.io/" + v)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("discovery of certificates.k8s.io/%s: %w", v, err)
		}
		if slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == "clustertrustbundles" }) {
			return v, nil
		}
	}
	return "", nil
}

// newCTBAPI builds the informer (only the object named name is watched)
// and accessors for version.
func newCTBAPI(client kubernetes.Interface, version, name string, resync time.Duration) (*ctbAPI, error) {
	only := func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + name }
	switch version {
	case "v1beta1":
		api := client.CertificatesV1beta1().ClusterTrustBundles()
		return &ctbAPI{
			version:  version,
			informer: certinformersv1beta1.NewFilteredClusterTrustBundleInformer(client, resync, cache.Indexers{}, only),
			view: func(obj any) (*ctbView, bool) {
				b, ok := obj.(*certv1beta1.ClusterTrustBundle)
				if !ok {
					return nil, false
				}
				return &ctbView{Name: b.Name, SignerName: b.Spec.SignerName, TrustBundle: b.Spec.TrustBundle, ResourceVersion: b.ResourceVersion, ManagedFields: b.ManagedFields}, true
			},
			create: func(ctx context.Context, name, signer, bundle string, opts metav1.CreateOptions) (string, error) {
				out, err := api.Create(ctx, &certv1beta1.ClusterTrustBundle{
					ObjectMeta: metav1.ObjectMeta{Name: name},
					Spec:       certv1beta1.ClusterTrustBundleSpec{SignerName: signer, TrustBundle: bundle},
				}, opts)
				if err != nil {
					return "", err
				}
				return out.ResourceVersion, nil
			},
			update: func(ctx context.Context, obj any, bundle string, opts metav1.UpdateOptions) (string, error) {
				b := obj.(*certv1beta1.ClusterTrustBundle).DeepCopy()
				b.Spec.TrustBundle = bundle
				out, err := api.Update(ctx, b, opts)
				if err != nil {
					return "", err
				}
				return out.ResourceVersion, nil
			},
		}, nil
	case "v1alpha1":
		api := client.CertificatesV1alpha1().ClusterTrustBundles()
		return &ctbAPI{
			version:  version,
			informer: certinformersv1alpha1.NewFilteredClusterTrustBundleInformer(client, resync, cache.Indexers{}, only),
			view: func(obj any) (*ctbView, bool) {
				b, ok := obj.(*certv1alpha1.ClusterTrustBundle)
				if !ok {
					return nil, false
				}
				return &ctbView{Name: b.Name, SignerName: b.Spec.SignerName, TrustBundle: b.Spec.TrustBundle, ResourceVersion: b.ResourceVersion, ManagedFields: b.ManagedFields}, true
			},
			create: func(ctx context.Context, name, signer, bundle string, opts metav1.CreateOptions) (string, error) {
				out, err := api.Create(ctx, &certv1alpha1.ClusterTrustBundle{
					ObjectMeta: metav1.ObjectMeta{Name: name},
					Spec:       certv1alpha1.ClusterTrustBundleSpec{SignerName: signer, TrustBundle: bundle},
				}, opts)
				if err != nil {
					return "", err
				}
				return out.ResourceVersion, nil
			},
			update: func(ctx context.Context, obj any, bundle string, opts metav1.UpdateOptions) (string, error) {
				b := obj.(*certv1alpha1.ClusterTrustBundle).DeepCopy()
				b.Spec.TrustBundle = bundle
				out, err := api.Update(ctx, b, opts)
				if err != nil {
					return "", err
				}
				return out.ResourceVersion, nil
			},
		}, nil
	}
	return nil, fmt.Errorf("ClusterTrustBundle version %q not supported", version)
}
