package integration

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/meshca/broker/broker"
	"github.com/meshca/broker/caclient"
	"github.com/meshca/broker/config"
	"github.com/meshca/broker/integration/testenv"
)

// startBroker runs a broker on 127.0.0.1 with cfg's defaults applied; kube,
// if not nil, is the local cluster whose API server reviews tokens.
func startBroker(t testing.TB, kube *testenv.Kube, mod func(*config.Config)) *broker.Broker {
	t.Helper()
	return startBrokerLogging(t, kube, mod, nil)
}

// startBrokerLogging is startBroker with the broker's log (JSON lines)
// written to logOut as well.
func startBrokerLogging(t testing.TB, kube *testenv.Kube, mod func(*config.Config), logOut io.Writer) *broker.Broker {
	t.Helper()
	off := false
	cfg := &config.Config{
		Listen:        "127.0.0.1:0",
		MetricsListen: "127.0.0.1:0",
		DataDir:       t.TempDir(),
	}
	if kube != nil {
		cfg.Authn.Kubernetes.Kubeconfig = kube.Kubeconfig
	} else {
		cfg.Authn.Kubernetes.Enabled = &off
	}
	if mod != nil {
		mod(cfg)
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	if logOut == nil {
		logOut = io.Discard
	}
	if os.Getenv("MESHCA_TEST_LOG") != "" {
		logOut = io.MultiWriter(logOut, os.Stderr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := broker.Start(ctx, cfg, broker.Options{Listener: lis, Logger: slog.New(slog.NewJSONHandler(logOut, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		b.Stop(ctx)
	})
	if kube != nil {
		// Tests exercise the steady state: the local cluster's view synced
		// (until then tokens go to TokenReview, which tests cover apart).
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if !b.Clusters().Local().WaitSynced(sctx) {
			t.Fatal("the local cluster did not sync within 30s")
		}
	}
	return b
}

func rootsPEM(t testing.TB, b *broker.Broker) []byte {
	t.Helper()
	p, err := b.RootsPEM(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func dial(t testing.TB, b *broker.Broker, clientCert *tls.Certificate) *caclient.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(rootsPEM(t, b))
	c, err := caclient.Dial(b.Addr(), pool, caclient.DefaultServerName, clientCert)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func backendSettings(t testing.TB, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// testenvRequired skips a test that runs real components unless the
// integration suite was asked for, like testenv.Tool does.
func testenvRequired(t testing.TB) {
	t.Helper()
	if os.Getenv("MESHCA_INTEGRATION") == "" {
		t.Skip("integration test: set MESHCA_INTEGRATION=1 (scripts/test.sh does) or =auto")
	}
}

// clientCert is an issued chain and its key as a TLS client certificate
// (renewal presents it).
func clientCert(key crypto.Signer, got *caclient.Issued) *tls.Certificate {
	cert := &tls.Certificate{PrivateKey: key, Leaf: got.Chain[0]}
	for _, c := range got.Chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert
}
