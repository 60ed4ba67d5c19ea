package broker

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/rest"

	"github.com/meshca/broker/cluster"
)

// TestIssuerOwner: without Kubernetes authentication no cluster owns an
// issuer; with it, a cluster whose issuer is not discovered yet might, so
// the answer is "cannot tell" (the jwks entry answers Unavailable) rather
// than "none". The served case needs a running cluster: see
// integration/jwks_scope_test.go.
func TestIssuerOwner(t *testing.T) {
	if issuerOwner(nil) != nil {
		t.Fatal("an owner lookup without a registry")
	}
	reg, err := cluster.NewRegistry(cluster.RegistryConfig{
		LocalID: "east",
		Local:   &rest.Config{Host: "https://127.0.0.1:1"},
		Options: cluster.Options{TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")},
	})
	if err != nil {
		t.Fatal(err)
	}
	id, err := issuerOwner(reg)("https://vm-issuer.example")
	if err == nil || id != "" || !strings.Contains(err.Error(), "cluster east is not known yet") {
		t.Fatalf("undiscovered issuer: %q, %v", id, err)
	}
}
