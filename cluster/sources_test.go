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
    server: https://127.0.0.1:6443
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

func kubeconfig(cluster, user string) []byte {
	s := strings.Replace(kubeconfigTmpl, "%CLUSTER%", cluster, 1)
	return []byte(strings.Replace(s, "%USER%", user, 1))
}

func TestRESTConfigFromKubeconfigRefusesWhatRunsOrReads(t *testing.T) {
	const ca = "certificate-authority-data: " + "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJoVENDQVN1Z0F3SUJBZ0lRSVJpNnplUGw2bUt3N05xbENHSTFUekFLQmdncWhrak9QUVFEQWpBU01SQXcKRGdZRFZRUUtFd2RCWTIxbElFTnZNQjRYRFRFM01UQXlNREU1TkRNd05sb1hEVEU0TVRBeU1ERTVORE13Tmxvdwo="
	cases := []struct {
		name    string
		raw     []byte
		policy  KubeconfigPolicy
		mention string // "" means accepted
	}{
		{"inline token", kubeconfig("insecure-skip-tls-verify: true", "token: abc"), KubeconfigPolicy{}, ""},
		{"exec plugin", kubeconfig("insecure-skip-tls-verify: true", "exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}"), KubeconfigPolicy{}, "exec plugin (/bin/sh)"},
		{"exec plugin allowed", kubeconfig("insecure-skip-tls-verify: true", "exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/true, interactiveMode: Never}"), KubeconfigPolicy{AllowExec: true}, ""},
		{"auth provider", kubeconfig("insecure-skip-tls-verify: true", "auth-provider: {name: oidc, config: {}}"), KubeconfigPolicy{}, `auth provider "oidc"`},
		{"token file", kubeconfig("insecure-skip-tls-verify: true", "tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token"), KubeconfigPolicy{}, "refers to files"},
		{"client key file", kubeconfig("insecure-skip-tls-verify: true", "client-key: /etc/ssl/private/key.pem"), KubeconfigPolicy{}, "refers to files"},
		{"CA file", kubeconfig("certificate-authority: /etc/ssl/ca.pem", "token: abc"), KubeconfigPolicy{}, "CA file"},
		{"inline CA data", kubeconfig(ca, "token: abc"), KubeconfigPolicy{}, ""},
		{"not YAML", []byte("this: is: not"), KubeconfigPolicy{}, "not a valid kubeconfig"},
		{"no current context", []byte("apiVersion: v1\nkind: Config\n"), KubeconfigPolicy{}, "current context"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := RESTConfigFromKubeconfig(tc.raw, tc.policy)
			if tc.mention == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.mention)
			}
		})
	}
}

func TestReadKubeconfigDirSkipsHiddenAndRefused(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("west", kubeconfig("insecure-skip-tls-verify: true", "token: abc"))
	write("..data", kubeconfig("insecure-skip-tls-verify: true", "token: abc"))
	write("east", kubeconfig("insecure-skip-tls-verify: true", "exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}"))
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
