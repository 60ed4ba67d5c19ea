package authv1

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// The wire names are Istio's; a rename here breaks every Istio agent.
func TestWireNamesAreIstios(t *testing.T) {
	svc := File_istio_v1_auth_ca_proto.Services().Get(0)
	if svc.FullName() != "istio.v1.auth.IstioCertificateService" || svc.Methods().Get(0).Name() != "CreateCertificate" {
		t.Fatalf("service is %s/%s", svc.FullName(), svc.Methods().Get(0).Name())
	}
	req := (&IstioCertificateRequest{}).ProtoReflect().Descriptor()
	for name, num := range map[protoreflect.Name]protoreflect.FieldNumber{"csr": 1, "validity_duration": 3, "metadata": 4} {
		if f := req.Fields().ByName(name); f == nil || f.Number() != num {
			t.Errorf("IstioCertificateRequest.%s is not field %d", name, num)
		}
	}
	if f := (&IstioCertificateResponse{}).ProtoReflect().Descriptor().Fields().ByName("cert_chain"); f == nil || f.Number() != 1 || !f.IsList() {
		t.Errorf("IstioCertificateResponse.cert_chain is not repeated field 1")
	}
}

// TestGeneratedCodeIsCurrent regenerates the code with the pinned
// generators and fails if the committed files differ. It builds buf, so
// it runs in the full suite (MESHCA_INTEGRATION=1) only.
func TestGeneratedCodeIsCurrent(t *testing.T) {
	if os.Getenv("MESHCA_INTEGRATION") != "1" {
		t.Skip("set MESHCA_INTEGRATION=1 (the full suite does) to regenerate and compare")
	}
	repo, err := filepath.Abs("../../../..")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cmd := exec.Command("go", "tool", "-modfile=tools/go.mod", "buf", "generate", "-o", out)
	cmd.Dir = repo
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("buf generate: %v\n%s", err, b)
	}
	for _, name := range []string{"ca.pb.go", "ca_grpc.pb.go"} {
		want, err := os.ReadFile(filepath.Join(out, "proto/istio/v1/auth", name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run `make generate` and commit the result", name)
		}
	}
}
