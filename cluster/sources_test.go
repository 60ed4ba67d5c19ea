package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const kubeconfigTmpl = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: %SERVER%
    %CLUSTER%
users:
- name: u
  user:
    %USER%
contexts:
- name: ctx
  context: {cluster: c, user: u}
current-context: ctx
`

// testServer is an address no policy refuses (TEST-NET-3).
const testServer = "https://203.0.113.10:6443"

func kubeconfig(cluster, user string) []byte {
	return kubeconfigAt(testServer, cluster, user)
}

func kubeconfigAt(server, cluster, user string) []byte {
	s := strings.Replace(kubeconfigTmpl, "%SERVER%", server, 1)
	s = strings.Replace(s, "%CLUSTER%", cluster, 1)
	return []byte(strings.Replace(s, "%USER%", user, 1))
}

// caData is an inline CA, the form istioctl writes (the check does not
// parse it).
const caData = "certificate-authority-data: " + "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJoVENDQVN1Z0F3SUJBZ0lRSVJpNnplUGw2bUt3N05xbENHSTFUekFLQmdncWhrak9QUVFEQWpBU01SQXcKRGdZRFZRUUtFd2RCWTIxbElFTnZNQjRYRFRFM01UQXlNREU1TkRNd05sb1hEVEU0TVRBeU1ERTVORE13Tmxvdwo="

func TestRESTConfigFromKubeconfigRefusesWhatRunsOrReads(t *testing.T) {
	cases := []struct {
		name    string
		raw     []byte
		policy  KubeconfigPolicy
		mention string // "" means accepted
	}{
		{"inline token", kubeconfig(caData, "token: abc"), KubeconfigPolicy{}, ""},
		{"exec plugin", kubeconfig(caData, "exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}"), KubeconfigPolicy{}, "exec plugin (/bin/sh)"},
		{"exec plugin allowed", kubeconfig(caData, "exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/true, interactiveMode: Never}"), KubeconfigPolicy{AllowExec: true}, ""},
		{"auth provider", kubeconfig(caData, "auth-provider: {name: oidc, config: {}}"), KubeconfigPolicy{}, `auth provider "oidc"`},
		{"token file", kubeconfig(caData, "tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token"), KubeconfigPolicy{}, "refers to files"},
		{"client key file", kubeconfig(caData, "client-key: /etc/ssl/private/key.pem"), KubeconfigPolicy{}, "refers to files"},
		{"CA file", kubeconfig("certificate-authority: /etc/ssl/ca.pem", "token: abc"), KubeconfigPolicy{}, "CA file"},
		{"not YAML", []byte("this: is: not"), KubeconfigPolicy{}, "not a valid kubeconfig"},
		{"no current context", []byte("apiVersion: v1\nkind: Config\n"), KubeconfigPolicy{}, "current context"},
		{"insecure TLS", kubeconfig("insecure-skip-tls-verify: true", "token: abc"), KubeconfigPolicy{}, "insecure-skip-tls-verify"},
		{"insecure TLS allowed", kubeconfig("insecure-skip-tls-verify: true", "token: abc"), KubeconfigPolicy{AllowInsecureTLS: true}, ""},
		{"proxy", kubeconfig(caData+"\n    proxy-url: http://proxy.example:3128", "token: abc"), KubeconfigPolicy{}, `proxy-url "http://proxy.example:3128"`},
		{"proxy allowed", kubeconfig(caData+"\n    proxy-url: http://proxy.example:3128", "token: abc"), KubeconfigPolicy{AllowProxy: true}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { checkKubeconfig(t, tc.raw, tc.policy, tc.mention) })
	}
}

// TestRESTConfigFromKubeconfigRefusesServers: what a server URL may be.
func TestRESTConfigFromKubeconfigRefusesServers(t *testing.T) {
	cases := []struct {
		server  string
		policy  KubeconfigPolicy
		mention string // "" means accepted
	}{
		{"https://203.0.113.10:6443", KubeconfigPolicy{}, ""},
		{"https://api.cluster2.example:6443", KubeconfigPolicy{}, ""},
		{"https://[2001:db8::1]:6443", KubeconfigPolicy{}, ""},
		// A name is not resolved, whatever it resolves to.
		{"https://127.0.0.1.nip.io:6443", KubeconfigPolicy{}, ""},
		{"http://203.0.113.10:6443", KubeconfigPolicy{}, "plaintext http"},
		{"http://203.0.113.10:6443", KubeconfigPolicy{AllowPlaintext: true}, ""},
		{"//203.0.113.10:6443", KubeconfigPolicy{}, "no https:// scheme"},
		{"api.cluster2.example:6443", KubeconfigPolicy{}, "no https:// scheme"},
		{"ftp://203.0.113.10", KubeconfigPolicy{}, "no https:// scheme"},
		{"https://127.0.0.1:6443", KubeconfigPolicy{}, "loopback address 127.0.0.1"},
		{"https://127.0.0.1:6443", KubeconfigPolicy{AllowLoopback: true}, ""},
		{"https://127.8.9.10:6443", KubeconfigPolicy{}, "loopback address 127.8.9.10"},
		{"https://[::1]:6443", KubeconfigPolicy{}, "loopback address ::1"},
		{"https://[::1]:6443", KubeconfigPolicy{AllowLoopback: true}, ""},
		{"https://[::ffff:127.0.0.1]:6443", KubeconfigPolicy{}, "loopback address 127.0.0.1"},
		{"https://0.0.0.0:6443", KubeconfigPolicy{}, "loopback address 0.0.0.0"},
		{"https://[::]:6443", KubeconfigPolicy{}, "loopback address ::"},
		{"https://localhost:6443", KubeconfigPolicy{}, "on localhost"},
		{"https://LocalHost.:6443", KubeconfigPolicy{}, "on localhost"},
		{"https://api.localhost:6443", KubeconfigPolicy{}, "on localhost"},
		{"https://localhost:6443", KubeconfigPolicy{AllowLoopback: true}, ""},
		{"https://127.1:6443", KubeconfigPolicy{}, "numeric host"},
		{"https://2130706433:6443", KubeconfigPolicy{}, "numeric host"},
		{"https://0x7f000001:6443", KubeconfigPolicy{}, "numeric host"},
		{"https://169.254.169.254", KubeconfigPolicy{}, "link-local address 169.254.169.254"},
		{"https://169.254.169.254", KubeconfigPolicy{AllowLinkLocal: true}, ""},
		{"https://169.254.169.254", KubeconfigPolicy{AllowLoopback: true}, "link-local"},
		{"https://[fe80::1]:6443", KubeconfigPolicy{}, "link-local address fe80::1"},
		{"https://[fe80::1%25eth0]:6443", KubeconfigPolicy{}, "link-local address fe80::1%eth0"},
		{"https://[febf::1]:6443", KubeconfigPolicy{}, "link-local"},
		{"https://[fe80::1]:6443", KubeconfigPolicy{AllowLinkLocal: true}, ""},
		{"https://[::ffff:169.254.169.254]", KubeconfigPolicy{}, "link-local address 169.254.169.254"},
		{"https://:6443", KubeconfigPolicy{}, "no host"},
	}
	for _, tc := range cases {
		t.Run(tc.server, func(t *testing.T) {
			checkKubeconfig(t, kubeconfigAt(tc.server, caData, "token: abc"), tc.policy, tc.mention)
		})
	}
}

func checkKubeconfig(t *testing.T, raw []byte, p KubeconfigPolicy, mention string) {
	t.Helper()
	_, err := RESTConfigFromKubeconfig(raw, p)
	if mention == "" {
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	if err == nil || !strings.Contains(err.Error(), mention) {
		t.Fatalf("err = %v, want it to mention %q", err, mention)
	}
}

func TestReadKubeconfigDirSkipsHiddenAndRefused(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("west", kubeconfig(caData, "token: abc"))
	write("..data", kubeconfig(caData, "token: abc"))
	write("east", kubeconfig(caData, "exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}"))
	var refused []string
	got, err := readKubeconfigDir(dir, KubeconfigPolicy{}, func(msg string, args ...any) { refused = append(refused, msg) })
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got["west"].rc == nil {
		t.Fatalf("clusters %v, want only west", got)
	}
	if len(refused) != 1 {
		t.Fatalf("refusals logged: %v, want one (east)", refused)
	}
}
