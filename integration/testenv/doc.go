// Package testenv starts the real components the integration tests run against: etcd and kube-apiserver, Vault, step-ca and the Istio agent.
//
// The binaries come from scripts/install-tools.sh, which builds or installs
// them into $MESHCA_TOOLS/bin (default $HOME/.cache/meshca-tools/bin, see
// ToolsDir). Tests that need them run only when MESHCA_INTEGRATION is set,
// so a plain `go test ./...` is a quick unit-test run. With
// MESHCA_INTEGRATION=1 (scripts/test.sh) a missing binary fails the test, so
// the full suite never passes by skipping; with any other value (e.g. auto)
// it is skipped with a hint to run the script.
//
// Every server listens on 127.0.0.1 on a port the kernel hands out (retried
// on a clash), logs to a file in t.TempDir() whose tail is printed when the
// test fails, and is stopped by t.Cleanup (and killed if the test binary
// dies). Servers are independent, so tests using them may run in parallel.
//
// # Kubernetes
//
//	e := testenv.StartEtcd(t)                  // optional: StartKube starts its own
//	k := testenv.StartKube(t, testenv.KubeEtcd(e), testenv.KubeName("east"))
//	k.CreateNamespace(t, "apps")               // also creates its "default" SA
//	k.CreateServiceAccount(t, "apps", "web")
//	k.CreatePod(t, "apps", "web-0", "web")     // spec.nodeName set: no scheduler/kubelet needed
//	tok, err := k.Token(ctx, "apps", "web", []string{testenv.IstioCAAudience}, time.Hour, "web-0")
//	st, err := k.TokenReview(ctx, tok, []string{"istio-ca"})
//	k.DeletePod(t, "apps", "web-0")            // force delete; the bound token is then refused
//
// Kube has RESTConfig/Client (admin via a system:masters client cert),
// Kubeconfig (path), KubeconfigForToken, Issuer, APIAudiences (issuer and
// istio-ca), the service-account public key (ServiceAccountPublicKeyPEM,
// ServiceAccountKeyFile) and JWKS/OpenIDConfiguration as served. Only
// kube-apiserver runs: no controllers, so namespaces get no default service
// account or root-CA configmap by themselves, and pods stay Pending.
// Several StartKube calls on one Etcd give independent clusters (own
// --etcd-prefix, own signing key): each refuses the others' tokens.
// kube-apiserver caches successful token authentications for 10 s (fixed,
// no flag): a pod-bound token is refused by TokenReview up to ~10 s after
// its pod is deleted (measured: 10.0 s), so revocation tests must poll.
//
// # Vault
//
// StartVault runs `vault server -dev` (root token RootToken, address Addr).
// Client(t) returns a github.com/hashicorp/vault/api client; EnablePKI mounts
// a PKI engine with a root CA and a SPIFFE role. Stop/Start/Restart end and
// start the process: dev mode keeps NO state across them (setup must be
// redone). Pause/Resume (SIGSTOP/SIGCONT) simulate an outage that keeps
// state: requests hang (time out) rather than being refused.
//
// # step-ca
//
// StartStepCA runs `step ca init` (standalone, password files) and step-ca
// (StartStepCAWith: another provisioner name, a bare CA whose provisioner a
// test adds itself, a hook before start; StepCA.Env for the step CLI)
// with one JWK provisioner (StepCAProvisioner) whose x509 template
// (StepCAX509Template) issues SPIFFE certificates: empty subject, the
// token's SANs (which must equal the CSR's), digitalSignature+keyEncipherment,
// serverAuth+clientAuth. StepCA exposes URL, RootPEM/RootFile,
// IntermediatePEM, Provisioner, ProvisionerKID, Password/PasswordFile,
// ProvisionerEncryptedKey/ProvisionerKeyFile (JWE, as in ca.json) and the
// decrypted ProvisionerKeyJSON; Token mints a one-time token with the step
// CLI. Stop/Start/Restart keep state; Pause/Resume as for Vault.
//
// # The Istio agent (Linux, root)
//
// RunPilotAgent runs the real `pilot-agent proxy sidecar` without Envoy and
// returns the cert-chain.pem, key.pem and root-cert.pem it wrote
// (StartPilotAgent + WaitForCerts for longer runs, e.g. rotation). The agent
// runs in a private network namespace (created in-process with
// unshare(CLONE_NEWNET) on a dedicated OS thread, loopback up), so its fixed
// ports (15020...) never clash; inside it, CA_ADDR is localhost:15012, which
// the test process forwards to PilotAgentOptions.CAAddr. Because the host
// contains "localhost", the agent verifies the CA's TLS certificate as
// istiod.istio-system.svc against PilotAgentOptions.RootPEM.
//
// # Test TLS
//
// NewCA/CA.Issue make throwaway CAs and leaf certificates (e.g. a serving
// certificate for istiod.istio-system.svc).
package testenv
