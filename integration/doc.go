// Package integration holds the end-to-end tests: the broker against a real
// kube-apiserver and etcd, the real Istio agent, and every backend's real
// server (or wire-faithful fake). The harness that starts those components
// is integration/testenv; the fakes are under integration/fakes.
package integration
