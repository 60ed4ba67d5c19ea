//go:build linux

package testenv

import (
	"bytes"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// PilotAgentOptions configures the Istio agent run by StartPilotAgent/RunPilotAgent.
type PilotAgentOptions struct {
	// CAAddr is the CA (broker) gRPC address as the test process reaches it,
	// e.g. 127.0.0.1:PORT. Required. The agent itself dials CA_ADDR =
	// CAHost:CAPort inside its private network namespace, forwarded here.
	CAAddr string
	// CAHost is the host part of CA_ADDR the agent dials (default "localhost",
	// which makes the agent verify the CA's certificate as istiod.istio-system.svc).
	// Only loopback names resolve inside the namespace.
	CAHost string
	// CAPort is the port of CA_ADDR inside the namespace (default 15012;
	// 15010 would make the agent use plaintext).
	CAPort int
	// Token is written to ./var/run/secrets/tokens/istio-token.
	Token string
	// RootPEM is written to ./var/run/secrets/istio/root-cert.pem: the roots
	// the agent trusts for the CA's TLS certificate.
	RootPEM []byte
	// Pod identity; defaults: Namespace "default", PodName "workload-0",
	// ServiceAccount "default", ClusterID "Kubernetes", TrustDomain "cluster.local".
	Namespace, PodName, ServiceAccount, ClusterID, TrustDomain string
	// SecretTTL is the requested certificate lifetime (SECRET_TTL; default 24h).
	SecretTTL time.Duration
	// ECDSA requests a P-256 key (ECC_SIGNATURE_ALGORITHM=ECDSA) instead of RSA-2048.
	ECDSA bool
	// InstanceIP (INSTANCE_IP; default 10.1.2.3).
	InstanceIP string
	// CAHeaders become CA_HEADER_<KEY>=<value>: extra gRPC metadata on CSR requests.
	CAHeaders map[string]string
	// ExtraEnv is appended to the agent's environment ("KEY=value").
	ExtraEnv []string
	// Args replace the default command line "proxy sidecar".
	Args []string
	// Timeout for RunPilotAgent's wait for certificates (default 30s).
	Timeout time.Duration
}

// AgentCerts are the files the agent wrote into OUTPUT_CERTS.
type AgentCerts struct {
	CertChainPEM []byte // cert-chain.pem: leaf first
	KeyPEM       []byte // key.pem
	RootCertPEM  []byte // root-cert.pem
	Log          string // the agent's output up to that point
}

// PilotAgent is a running `pilot-agent proxy sidecar` (no Envoy) in a
// private network namespace with its own loopback, so its fixed ports
// (15020...) never clash. Connections to CA_ADDR inside the namespace are
// forwarded by the test process to PilotAgentOptions.CAAddr.
type PilotAgent struct {
	WorkDir   string // the agent's working directory (holds ./var/run/secrets/...)
	OutputDir string // OUTPUT_CERTS
	Env       []string

	proc  *process
	conns atomic.Int64
	ln    []net.Listener
}

// StartPilotAgent starts the agent (binary "pilot-agent" from ToolsDir). It
// is stopped when the test ends. Needs CAP_SYS_ADMIN (root) to create the
// network namespace; without it the test is skipped (fails with MESHCA_INTEGRATION=1).
func StartPilotAgent(t testing.TB, o PilotAgentOptions) (*PilotAgent, error) {
	t.Helper()
	bin := Tool(t, "pilot-agent")
	if o.CAAddr == "" {
		return nil, errors.New("PilotAgentOptions.CAAddr is required")
	}
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&o.CAHost, "localhost")
	def(&o.Namespace, "default")
	def(&o.PodName, "workload-0")
	def(&o.ServiceAccount, "default")
	def(&o.ClusterID, "Kubernetes")
	def(&o.TrustDomain, "cluster.local")
	def(&o.InstanceIP, "10.1.2.3")
	if o.CAPort == 0 {
		o.CAPort = 15012
	}
	if o.SecretTTL == 0 {
		o.SecretTTL = 24 * time.Hour
	}
	work := t.TempDir()
	a := &PilotAgent{WorkDir: work, OutputDir: filepath.Join(work, "output-certs")}
	if err := os.MkdirAll(a.OutputDir, 0o755); err != nil {
		return nil, err
	}
	writeFile(t, work, "var/run/secrets/tokens/istio-token", []byte(o.Token))
	writeFile(t, work, "var/run/secrets/istio/root-cert.pem", o.RootPEM)

	env := []string{
		"HOME=" + work,
		"DISABLE_ENVOY=true",
		"OUTPUT_CERTS=" + a.OutputDir,
		"CA_ADDR=" + net.JoinHostPort(o.CAHost, itoa(o.CAPort)),
		"JWT_POLICY=third-party-jwt",
		"POD_NAMESPACE=" + o.Namespace,
		"POD_NAME=" + o.PodName,
		"SERVICE_ACCOUNT=" + o.ServiceAccount,
		"ISTIO_META_CLUSTER_ID=" + o.ClusterID,
		"TRUST_DOMAIN=" + o.TrustDomain,
		"SECRET_TTL=" + o.SecretTTL.String(),
		"INSTANCE_IP=" + o.InstanceIP,
	}
	if o.ECDSA {
		env = append(env, "ECC_SIGNATURE_ALGORITHM=ECDSA")
	}
	keys := make([]string, 0, len(o.CAHeaders))
	for k := range o.CAHeaders {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, "CA_HEADER_"+k+"="+o.CAHeaders[k])
	}
	env = append(env, o.ExtraEnv...)
	a.Env = env
	args := o.Args
	if args == nil {
		args = []string{"proxy", "sidecar"}
	}
	a.proc = newProcess(t, "pilot-agent-"+o.PodName, bin, args, env, work)

	// Create the namespace, its listener and the agent on one locked OS
	// thread that is never unlocked: the thread dies with the goroutine, so
	// the namespace change never leaks into the rest of the test process.
	// The goroutine lives until the agent exits (Pdeathsig is per thread);
	// no other server is forked from this thread (see spawn).
	type result struct {
		err   error
		unsup bool
	}
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			res <- result{fmt.Errorf("unshare(CLONE_NEWNET): %w", err), true}
			return
		}
		if err := loopbackUp(); err != nil {
			res <- result{fmt.Errorf("bring up lo in the agent's namespace: %w", err), false}
			return
		}
		l4, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", o.CAPort))
		if err != nil {
			res <- result{fmt.Errorf("forwarder listen in namespace: %w", err), false}
			return
		}
		a.ln = append(a.ln, l4)
		if l6, err := net.Listen("tcp", fmt.Sprintf("[::1]:%d", o.CAPort)); err == nil {
			a.ln = append(a.ln, l6)
		}
		if err := a.proc.startHere(); err != nil {
			for _, l := range a.ln {
				l.Close()
			}
			res <- result{err, false}
			return
		}
		res <- result{}
		<-a.proc.exited()
	}()
	r := <-res
	if r.unsup {
		Unavailable(t, "testenv: cannot create a network namespace for pilot-agent (needs root): %v", r.err)
	}
	if r.err != nil {
		return nil, r.err
	}
	t.Cleanup(func() {
		for _, l := range a.ln {
			l.Close()
		}
	})
	for _, l := range a.ln {
		go a.forward(l, o.CAAddr)
	}
	return a, nil
}

// loopbackUp sets IFF_UP on "lo" in the calling thread's network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

func (a *PilotAgent) forward(l net.Listener, target string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		a.conns.Add(1)
		go func() {
			defer c.Close()
			up, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err != nil {
				return
			}
			defer up.Close()
			var wg sync.WaitGroup
			wg.Add(2)
			pipe := func(dst, src net.Conn) {
				defer wg.Done()
				_, _ = io.Copy(dst, src)
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
			}
			go pipe(up, c)
			go pipe(c, up)
			wg.Wait()
		}()
	}
}

// Connections returns how many connections the agent opened to its CA_ADDR.
func (a *PilotAgent) Connections() int { return int(a.conns.Load()) }

// Log returns the agent's output so far.
func (a *PilotAgent) Log() string { return a.proc.log() }

// Running reports whether the agent process is still running.
func (a *PilotAgent) Running() bool { return a.proc.running() }

// Stop stops the agent (also done automatically at the end of the test).
func (a *PilotAgent) Stop() { a.proc.stop() }

// ReadCerts returns the files currently in OutputDir, or an error unless all
// three are present and hold PEM data.
func (a *PilotAgent) ReadCerts() (*AgentCerts, error) {
	c := &AgentCerts{}
	for name, dst := range map[string]*[]byte{
		"cert-chain.pem": &c.CertChainPEM, "key.pem": &c.KeyPEM, "root-cert.pem": &c.RootCertPEM,
	} {
		b, err := os.ReadFile(filepath.Join(a.OutputDir, name))
		if err != nil {
			return nil, err
		}
		if blk, _ := pem.Decode(b); blk == nil {
			return nil, fmt.Errorf("%s holds no PEM data yet", name)
		}
		*dst = b
	}
	c.Log = a.Log()
	return c, nil
}

// WaitForCerts waits until cert-chain.pem, key.pem and root-cert.pem are in
// OutputDir. The error carries the agent's log.
func (a *PilotAgent) WaitForCerts(timeout time.Duration) (*AgentCerts, error) {
	deadline := time.Now().Add(timeout)
	for {
		c, err := a.ReadCerts()
		if err == nil {
			return c, nil
		}
		if !a.Running() {
			return nil, fmt.Errorf("pilot-agent exited before writing certificates (%v); log:\n%s", err, a.proc.tail(80))
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("pilot-agent wrote no certificates within %v (%v, %d connections to the CA); log:\n%s",
				timeout, err, a.Connections(), a.proc.tail(80))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// RunPilotAgent starts the agent, waits for its certificates (opts.Timeout,
// default 30 s), stops it and returns them.
func RunPilotAgent(t testing.TB, o PilotAgentOptions) (*AgentCerts, error) {
	t.Helper()
	timeout := o.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	a, err := StartPilotAgent(t, o)
	if err != nil {
		return nil, err
	}
	defer a.Stop()
	return a.WaitForCerts(timeout)
}

// CertChain splits a PEM bundle into its certificates' DER bytes.
func CertChain(pemData []byte) [][]byte {
	var out [][]byte
	rest := bytes.TrimSpace(pemData)
	for len(rest) > 0 {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if strings.HasSuffix(blk.Type, "CERTIFICATE") {
			out = append(out, blk.Bytes)
		}
	}
	return out
}
