// Wrapper module: builds the Istio agent (pilot-agent) from an istio.io/istio pseudo-version the
// module proxy serves (its release tags are refused), with the API and go-control-plane pins it needs.
module meshca.local/tools/pilot-agent

go 1.26.0

tool istio.io/istio/pilot/cmd/pilot-agent

require (
	github.com/envoyproxy/go-control-plane/contrib v1.36.1-0.20260729145720-a2d8c7492908
	github.com/envoyproxy/go-control-plane/envoy v1.37.1-0.20260729145720-a2d8c7492908
	istio.io/api v1.31.1
	istio.io/client-go v1.31.1
	istio.io/istio v0.0.0-20260827124520-eed52ebb66ad
)
