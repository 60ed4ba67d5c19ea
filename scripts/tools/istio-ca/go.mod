// Wrapper module: builds istio-ca (main.go here), Istio's own CA server code
// (security/pkg/server/ca with its Kubernetes authenticator, security/pkg/pki/ca) as a
// benchmark peer for the broker. Same istio.io/istio pseudo-version and pins as pilot-agent.
module meshca.local/tools/istio-ca

go 1.26.0

require (
	github.com/envoyproxy/go-control-plane/contrib v1.36.1-0.20260729145720-a2d8c7492908
	github.com/envoyproxy/go-control-plane/envoy v1.37.1-0.20260729145720-a2d8c7492908
	istio.io/api v1.31.1
	istio.io/client-go v1.31.1
	istio.io/istio v0.0.0-20260827124520-eed52ebb66ad
)
