// Package broker assembles a running broker from its configuration: the
// backend, trust anchors, authenticators, policy, the serving certificate,
// the gRPC server and the metrics and health endpoints.
package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/meshca/broker/authn"
	"github.com/meshca/broker/authn/jwks"
	"github.com/meshca/broker/authn/kube"
	"github.com/meshca/broker/authn/mtls"
	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/budget"
	"github.com/meshca/broker/cluster"
	"github.com/meshca/broker/config"
	"github.com/meshca/broker/connlimit"
	"github.com/meshca/broker/impersonation"
	"github.com/meshca/broker/issuance"
	"github.com/meshca/broker/istiodcert"
	"github.com/meshca/broker/leader"
	"github.com/meshca/broker/policy"
	authv1 "github.com/meshca/broker/proto/istio/v1/auth"
	"github.com/meshca/broker/publish"
	"github.com/meshca/broker/runner"
	"github.com/meshca/broker/server"
	"github.com/meshca/broker/servingcert"
	"github.com/meshca/broker/trust"
	"github.com/meshca/broker/verify"

	// Every backend registers itself.
	_ "github.com/meshca/broker/backends/all"
)

// Options are what tests and embedders set beyond the configuration file.
type Options struct {
	// Listener, if set, is used instead of cfg.Listen.
	Listener net.Listener
	// Logger (default: from cfg.Log).
	Logger *slog.Logger
	// ExtraAuthenticators run after the configured ones.
	ExtraAuthenticators []authn.Authenticator
}

// Broker is a running broker.
type Broker struct {
	Signer backends.Signer
	Trust  *trust.Bundle
	Log    *slog.Logger

	grpc     *grpc.Server
	lis      net.Listener
	metrics  *http.Server
	metLis   net.Listener
	rotator  *servingcert.Rotator
	parts    *runner.Group
	clusters *cluster.Registry
	wg       sync.WaitGroup
	serveErr chan error
}

// Start builds everything from cfg (which must have defaults applied and
// be valid) and starts serving. It returns once the broker accepts
// requests.
func Start(ctx context.Context, cfg *config.Config, opts Options) (*Broker, error) {
	log := opts.Logger
	if log == nil {
		log = NewLogger(cfg.Log)
	}
	// Everything that can be judged without the backend first: a
	// configuration that cannot run must not leave state behind (the
	// local CA writes a root when it is built).
	pol, err := policy.New(cfg.PolicyConfig())
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	var configured []*x509.Certificate
	if cfg.Authn.ClientCertificateIssuers != "" {
		if configured, err = backends.ReadCertificates(cfg.Authn.ClientCertificateIssuers); err != nil {
			return nil, fmt.Errorf("authn.clientCertificateIssuers: %w", err)
		}
	}
	var clusters *cluster.Registry
	if *cfg.Authn.Kubernetes.Enabled {
		if clusters, err = newClusters(cfg, log); err != nil {
			return nil, err
		}
	}
	signer, err := backends.New(ctx, cfg.Backend.Type, backends.Options{Config: cfg.Backend.Settings, DataDir: cfg.DataDir, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("backend: %w", err)
	}
	anchors := trust.NewBundle(trust.BundleConfig{Backend: signer.TrustAnchors, Extra: extraRoots(cfg.ExtraTrustedRoots), Refresh: cfg.TrustAnchorsRefresh.Duration, Log: log})
	if err := anchors.Load(ctx); err != nil {
		return nil, err
	}
	issuers, err := trust.NewIssuers(configured, filepath.Join(cfg.DataDir, "issuers.pem"))
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if clusters != nil {
		reg.MustRegister(clusterStates{clusters})
	}
	authenticator, err := authenticators(cfg, anchors, issuers, clusters, opts.ExtraAuthenticators)
	if err != nil {
		return nil, err
	}
	imp, err := newImpersonation(cfg, clusters)
	if err != nil {
		return nil, err
	}
	lim := cfg.Limits
	idBudget, err := budget.New(budget.Config{Burst: lim.Issuance.Burst, Refill: lim.Issuance.Refill.Duration, MaxKeys: lim.Issuance.MaxIdentities})
	if err != nil {
		return nil, fmt.Errorf("limits.issuance: %w", err)
	}
	metrics := server.NewMetrics(reg)
	srv, err := server.New(server.Config{
		Budget: idBudget,
		Issuance: issuance.New(signer, issuance.Config{
			SignTimeout: max(time.Minute, cfg.SignTimeout.Duration),
			MaxInFlight: lim.Issuance.MaxInFlight,
			Rate:        lim.Issuance.BackendRate,
			Burst:       lim.Issuance.BackendBurst,
		}),
		Impersonation: imp,
		Authenticator: authenticator,
		Policy:        pol,
		Signer:        signer,
		Trust:         anchors,
		Issuers:       issuers,
		SignTimeout:   cfg.SignTimeout.Duration,
		Logger:        log,
		Metrics:       metrics,
	})
	if err != nil {
		return nil, err
	}
	rot, err := servingcert.New(servingcert.Config{DNSNames: cfg.TLS.DNSNames, TTL: cfg.TLS.TTL.Duration, Issuers: issuers}, signer, anchors, log)
	if err != nil {
		return nil, err
	}
	if err := rot.Issue(ctx); err != nil {
		return nil, fmt.Errorf("issuing the broker's serving certificate: %w", err)
	}
	tlsCfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: rot.GetCertificate,
		// Client certificates are verified by the mtls authenticator
		// against the current anchors; the handshake only collects them.
		ClientAuth: tls.RequestClientCert,
		NextProtos: []string{"h2"},
		// A ticket costs an encryption and a write on every full
		// handshake, and pays back only for a client that reconnects
		// within its lifetime; agents keep their connection, and a
		// restarting pod has no ticket to offer.
		SessionTicketsDisabled: true,
	}
	streams := &connlimit.Streams{Max: int64(lim.MaxStreams), MaxAge: lim.MaxStreamAge.Duration, Refused: func() { metrics.Refused("streams_total") }}
	gs := grpc.NewServer(append(transportOptions(lim),
		grpc.InTapHandle(streams.Tap),
		grpc.Creds(credentials.NewTLS(tlsCfg)),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)...)
	authv1.RegisterIstioCertificateServiceServer(gs, srv)

	lis := opts.Listener
	if lis == nil {
		if lis, err = net.Listen("tcp", cfg.Listen); err != nil {
			return nil, fmt.Errorf("listen: %w", err)
		}
	}
	cl := connlimit.New(lis, lim.MaxConnections, lim.MaxConnectionsPerIP)
	cl.Refused = func(limit string) { metrics.Refused("connections_" + limit) }
	lis = cl
	parts := &runner.Group{Log: log}
	var elector *leader.Elector
	if *cfg.LeaderElection.Enabled {
		el, err := leader.New(leader.Config{
			Client: clusters.Local().Client, Namespace: cfg.LeaderElection.Namespace, Name: cfg.LeaderElection.Name,
			Identity:      cfg.LeaderElection.Identity,
			LeaseDuration: cfg.LeaderElection.LeaseDuration.Duration,
			RenewDeadline: cfg.LeaderElection.LeaseDuration.Duration * 2 / 3,
			RetryPeriod:   max(cfg.LeaderElection.LeaseDuration.Duration/7, 500*time.Millisecond),
			Log:           log,
		})
		if err != nil {
			lis.Close()
			return nil, err
		}
		parts.Elector = el
		elector = el
		reg.MustRegister(leaderState{el, cfg.LeaderElection.Namespace + "/" + cfg.LeaderElection.Name})
	}
	if *cfg.Publish.Enabled {
		pub, err := publish.New(publish.Config{
			Clusters: clusters, Bundle: anchors,
			NamespaceSelector:        cfg.Publish.NamespaceSelector,
			ClusterTrustBundleName:   cfg.Publish.ClusterTrustBundle.Name,
			ClusterTrustBundleSigner: cfg.Publish.ClusterTrustBundle.Signer,
			Registerer:               reg,
			Log:                      log,
		})
		if err != nil {
			lis.Close()
			return nil, fmt.Errorf("publish: %w", err)
		}
		parts.Add("trust-publisher", pub)
	}
	if cfg.Istiod.Enabled {
		k, err := istiodcert.New(istiodcert.Config{
			Client: clusters.Local().Client, Namespace: cfg.Istiod.Namespace, Name: cfg.Istiod.SecretName,
			Revision: cfg.Istiod.Revision, ExtraDNSNames: cfg.Istiod.ExtraDNSNames, TTL: cfg.Istiod.TTL.Duration, Log: log,
		}, signer, anchors)
		if err != nil {
			lis.Close()
			return nil, fmt.Errorf("istiod: %w", err)
		}
		parts.Add("istiod-certificate", k)
	}
	b := &Broker{Signer: signer, Trust: anchors, Log: log, grpc: gs, lis: lis, rotator: rot, parts: parts, clusters: clusters, serveErr: make(chan error, 2)}
	if cfg.MetricsListen != "off" {
		if b.metLis, err = net.Listen("tcp", cfg.MetricsListen); err != nil {
			lis.Close()
			return nil, fmt.Errorf("metricsListen: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
			if rot.Current() == nil {
				http.Error(w, "no serving certificate", http.StatusServiceUnavailable)
				return
			}
			if clusters != nil && !clusters.Ready() {
				http.Error(w, "local cluster not synced yet", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		})
		// Not part of /readyz: when the election fails for every replica
		// (its namespace deleted, RBAC lost) an unready pod would stop
		// issuance too, which the election does not affect. A monitor or
		// a rollout gate asks here.
		mux.HandleFunc("/readyz/leader-election", func(w http.ResponseWriter, _ *http.Request) {
			if elector == nil {
				fmt.Fprintln(w, "ok: leader election off")
				return
			}
			bound := 4 * cfg.LeaderElection.LeaseDuration.Duration
			if d, reason := elector.Failing(); d > bound {
				http.Error(w, fmt.Sprintf("leader election failing for %s (more than %s): %s", d.Round(time.Second), bound, reason), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintf(w, "ok: leading=%v\n", elector.Leading())
		})
		b.metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		b.goServe(func() error { return b.metrics.Serve(b.metLis) })
	}
	// Every long-running part under one lifecycle.
	parts.Add("trust-bundle", anchors)
	parts.Add("serving-certificate", runner.Func(func(ctx context.Context) error { rot.Run(ctx); return nil }))
	if clusters != nil {
		parts.Add("clusters", clusters)
	}
	for _, a := range authenticator {
		if r, ok := a.(interface{ Run(context.Context) }); ok {
			parts.Add("authn-"+a.Name(), runner.Func(func(ctx context.Context) error { r.Run(ctx); return nil }))
		}
	}
	parts.Start()
	b.goServe(func() error { return gs.Serve(lis) })
	log.Info("broker serving", "addr", lis.Addr().String(), "backend", cfg.Backend.Type, "trustDomain", cfg.TrustDomain, "clusterID", cfg.ClusterID)
	return b, nil
}

func (b *Broker) goServe(f func() error) {
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		if err := f(); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, grpc.ErrServerStopped) {
			b.serveErr <- err
		}
	}()
}

// Addr is the gRPC listen address.
func (b *Broker) Addr() string { return b.lis.Addr().String() }

// MetricsAddr is the metrics/health listen address ("" when off).
func (b *Broker) MetricsAddr() string {
	if b.metLis == nil {
		return ""
	}
	return b.metLis.Addr().String()
}

// RootsPEM is the trust bundle a mesh needs (Istio's root-cert.pem).
func (b *Broker) RootsPEM(context.Context) ([]byte, error) {
	s := b.Trust.Current()
	if s == nil {
		return nil, errors.New("trust bundle not loaded")
	}
	return s.PEM, nil
}

// ServingCertificate is the current TLS certificate, for tests.
func (b *Broker) ServingCertificate() *x509.Certificate { return b.rotator.Current().Leaf }

// Wait blocks until ctx ends or a server fails.
func (b *Broker) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-b.serveErr:
		return err
	}
}

// Stop drains in-flight requests (bounded by ctx) and stops everything.
func (b *Broker) Stop(ctx context.Context) {
	done := make(chan struct{})
	go func() { b.grpc.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		b.grpc.Stop()
	}
	if b.metrics != nil {
		_ = b.metrics.Shutdown(ctx)
	}
	b.parts.Stop()
	b.wg.Wait()
	// Backends with background work (Vault token renewal) or connections
	// (Google CAS) release them.
	if c, ok := b.Signer.(io.Closer); ok {
		if err := c.Close(); err != nil {
			b.Log.Warn("closing the backend", "error", err)
		}
	}
}

// newClusters builds the cluster registry: the local cluster and the
// remote ones Istio remote secrets or a kubeconfig directory name.
func newClusters(cfg *config.Config, log *slog.Logger) (*cluster.Registry, error) {
	k := cfg.Authn.Kubernetes
	rc, err := kube.RESTConfig(k.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("authn.kubernetes: %w", err)
	}
	rcfg := cluster.RegistryConfig{
		LocalID:          cfg.ClusterID,
		Local:            rc,
		Aliases:          k.Clusters.Aliases,
		KubeconfigDir:    k.Clusters.KubeconfigDir,
		KubeconfigPolicy: KubeconfigPolicy(k.Clusters),
		Options: cluster.Options{
			TrustDomain: spiffeid.RequireTrustDomainFromString(cfg.TrustDomain),
			Audiences:   k.Audiences,
			QPS:         k.QPS,
			Burst:       k.Burst,
			SyncTimeout: k.Clusters.SyncTimeout.Duration,
			MaxObjects:  k.MaxCachedObjects,
			Log:         log,
		},
	}
	if *k.Clusters.RemoteSecrets {
		rcfg.SecretNamespace = k.Clusters.SecretNamespace
	}
	reg, err := cluster.NewRegistry(rcfg)
	if err != nil {
		return nil, fmt.Errorf("authn.kubernetes.clusters: %w", err)
	}
	return reg, nil
}

// KubeconfigPolicy is what the configuration allows remote kubeconfigs
// (the broker's registry and the trust command read them alike).
func KubeconfigPolicy(cl config.Clusters) cluster.KubeconfigPolicy {
	return cluster.KubeconfigPolicy{
		AllowExec: cl.AllowExec, AllowAuthProvider: cl.AllowAuthProvider, AllowFiles: cl.AllowFiles,
		AllowInsecureTLS: cl.AllowInsecureTLS, AllowPlaintext: cl.AllowPlaintext, AllowProxy: cl.AllowProxy,
		AllowLoopback: cl.AllowLoopback, AllowLinkLocal: cl.AllowLinkLocal,
	}
}

// extraRoots reads the configured extra trusted roots (nil when none).
func extraRoots(file string) trust.Source {
	if file == "" {
		return nil
	}
	return trust.FileSource(file)
}

// newImpersonation allows the configured node agents (ambient ztunnel) the
// certificates of the pods on their node.
func newImpersonation(cfg *config.Config, clusters *cluster.Registry) (*impersonation.Checker, error) {
	ic := impersonation.Config{TrustDomain: spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)}
	for _, a := range cfg.TrustDomainAliases {
		ic.Aliases = append(ic.Aliases, spiffeid.RequireTrustDomainFromString(a))
	}
	if clusters != nil {
		ic.Clusters = impersonation.Registry{R: clusters}
		for _, s := range cfg.Authn.NodeAgents {
			a, err := impersonation.ParseNodeAgent(s)
			if err != nil {
				return nil, fmt.Errorf("authn.nodeAgents: %w", err)
			}
			ic.NodeAgents = append(ic.NodeAgents, a)
		}
	}
	return impersonation.New(ic)
}

// clusterStates exports each cluster's sync state and cache sizes.
type clusterStates struct{ r *cluster.Registry }

var (
	clusterStateDesc = prometheus.NewDesc("meshca_cluster_state", "1 for each cluster's current sync state (syncing, synced, failed).", []string{"cluster", "state"}, nil)
	clusterObjDesc   = prometheus.NewDesc("meshca_cluster_cached_objects", "Objects cached per cluster for revocation checks.", []string{"cluster", "kind"}, nil)
	clusterCapDesc   = prometheus.NewDesc("meshca_cluster_cached_objects_limit", "The cap on cached pods plus service accounts per cluster (authn.kubernetes.maxCachedObjects); past it the cluster's tokens go to TokenReview.", []string{"cluster"}, nil)
	clusterStaleDesc = prometheus.NewDesc("meshca_cluster_stale_seconds", "How long each cluster's view has not been known current (0 when it is): a failing list/watch or probe, or the object cap exceeded. Local decisions stop at once on a list/watch error or a 403, after 10s otherwise.", []string{"cluster"}, nil)
)

func (c clusterStates) Describe(ch chan<- *prometheus.Desc) {
	ch <- clusterStateDesc
	ch <- clusterObjDesc
	ch <- clusterCapDesc
	ch <- clusterStaleDesc
}

func (c clusterStates) Collect(ch chan<- prometheus.Metric) {
	for _, cl := range c.r.All() {
		ch <- prometheus.MustNewConstMetric(clusterStateDesc, prometheus.GaugeValue, 1, cl.ID, string(cl.State()))
		pods, sas := cl.Counts()
		ch <- prometheus.MustNewConstMetric(clusterObjDesc, prometheus.GaugeValue, float64(pods), cl.ID, "pods")
		ch <- prometheus.MustNewConstMetric(clusterObjDesc, prometheus.GaugeValue, float64(sas), cl.ID, "serviceaccounts")
		ch <- prometheus.MustNewConstMetric(clusterCapDesc, prometheus.GaugeValue, float64(cl.MaxObjects()), cl.ID)
		stale, _ := cl.Staleness()
		ch <- prometheus.MustNewConstMetric(clusterStaleDesc, prometheus.GaugeValue, stale.Seconds(), cl.ID)
	}
}

// leaderState exports whether this replica leads and how long the
// election has been failing.
type leaderState struct {
	e     *leader.Elector
	lease string
}

var (
	leaderDesc        = prometheus.NewDesc("meshca_leader", "1 while this replica holds the leader Lease (it publishes the trust bundle and keeps istiod's certificate).", []string{"lease"}, nil)
	leaderFailingDesc = prometheus.NewDesc("meshca_leader_election_failing_seconds", "How long this replica's Lease calls have been failing (0 when they work); while no replica leads, nothing is published.", []string{"lease"}, nil)
)

func (l leaderState) Describe(ch chan<- *prometheus.Desc) {
	ch <- leaderDesc
	ch <- leaderFailingDesc
}

func (l leaderState) Collect(ch chan<- prometheus.Metric) {
	leading := 0.0
	if l.e.Leading() {
		leading = 1
	}
	ch <- prometheus.MustNewConstMetric(leaderDesc, prometheus.GaugeValue, leading, l.lease)
	d, _ := l.e.Failing()
	ch <- prometheus.MustNewConstMetric(leaderFailingDesc, prometheus.GaugeValue, d.Seconds(), l.lease)
}

// Clusters is the cluster registry (nil when Kubernetes authentication is
// off).
func (b *Broker) Clusters() *cluster.Registry { return b.clusters }

func authenticators(cfg *config.Config, anchors *trust.Bundle, issuers *trust.Issuers, clusters *cluster.Registry, extra []authn.Authenticator) (authn.Chain, error) {
	td := spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	var chain authn.Chain
	if *cfg.Authn.Kubernetes.Enabled {
		k, err := kube.NewForClusters(kube.Config{
			ClusterID:    cfg.ClusterID,
			Clusters:     kube.Registry{R: clusters},
			Verification: cfg.Authn.Kubernetes.Verification,
			Audiences:    cfg.Authn.Kubernetes.Audiences,
			TrustDomain:  td,
			Timeout:      cfg.Authn.Kubernetes.Timeout.Duration,
		})
		if err != nil {
			return nil, fmt.Errorf("authn.kubernetes: %w", err)
		}
		chain = append(chain, k)
	}
	for i, j := range cfg.Authn.JWKS {
		a, err := jwks.New(jwks.Config{
			Issuer:          j.Issuer,
			File:            j.File,
			URL:             j.URL,
			CAFile:          j.CAFile,
			BearerTokenFile: j.TokenFile,
			Audiences:       j.Audiences,
			ClusterID:       j.ClusterID,
			TrustDomain:     td,
			MaxKeyAge:       j.MaxKeyAge.Duration,
			// A token bound to a pod, secret or node is a cluster's, and
			// only a cluster check sees that its object is gone.
			RefuseKubernetesBound: !j.AllowKubernetesBoundTokens,
			ServedBy:              issuerOwner(clusters),
		})
		if err != nil {
			return nil, fmt.Errorf("authn.jwks[%d]: %w", i, err)
		}
		chain = append(chain, a)
	}
	// Certificates last: a request that carries a token is judged by its
	// token alone, and only a request without one renews by certificate.
	if *cfg.Authn.ClientCertificates {
		aliases := make([]spiffeid.TrustDomain, 0, len(cfg.TrustDomainAliases))
		for _, a := range cfg.TrustDomainAliases {
			aliases = append(aliases, spiffeid.RequireTrustDomainFromString(a))
		}
		var off []mtls.Workload
		for _, w := range cfg.Authn.OffClusterWorkloads {
			parsed, err := mtls.ParseWorkload(w)
			if err != nil {
				return nil, fmt.Errorf("authn.offClusterWorkloads: %w", err)
			}
			off = append(off, parsed)
		}
		mc := mtls.Config{Anchors: anchors.Get, TrustDomain: td, Aliases: aliases, IssuedBy: issuers.Contains,
			OffCluster: off, IssuanceSlack: cfg.Policy.Backdate.Duration + verify.Slack}
		if clusters != nil {
			mc.Clusters = mtls.Registry{R: clusters}
		}
		m, err := mtls.New(mc)
		if err != nil {
			return nil, fmt.Errorf("authn.clientCertificates: %w", err)
		}
		chain = append(chain, m)
	}
	chain = append(chain, extra...)
	if len(chain) == 0 {
		return nil, errors.New("authn: no authenticator configured")
	}
	return chain, nil
}

// issuerOwner names the cluster of the live registry whose service-account
// issuer is issuer, so that a jwks entry never verifies, without its
// live-object checks, the tokens of a cluster the broker serves (nil
// without Kubernetes authentication: then there is none). A cluster
// whose issuer is not known yet (not reached since it joined) may be the
// one, so until every issuer is known it cannot tell, and the key set's
// tokens wait (Unavailable, retried) rather than slip through.
func issuerOwner(r *cluster.Registry) func(string) (string, error) {
	if r == nil {
		return nil
	}
	return func(issuer string) (string, error) {
		var unknown []string
		for _, c := range r.All() {
			switch c.Issuer() {
			case issuer:
				return c.ID, nil
			case "":
				unknown = append(unknown, c.ID)
			}
		}
		if len(unknown) > 0 {
			return "", fmt.Errorf("the service-account issuer of cluster %s is not known yet", strings.Join(unknown, ", "))
		}
		return "", nil
	}
}

// transportOptions shape the gRPC transport for what a mass restart
// brings: thousands of short connections, each carrying one request of a
// few kilobytes. gRPC's defaults are made for long streams of large
// messages; each costs here on every connection.
func transportOptions(lim config.Limits) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(maxRequestSize),
		// grpc-go's default is 16 MiB of headers per stream, which an
		// unauthenticated client can send on every stream; the broker
		// reads a token of about 1 KiB and a cluster ID. A larger header
		// list is refused by the transport before any handler runs.
		grpc.MaxHeaderListSize(uint32(lim.MaxHeaderListBytes)),
		// Unbounded by default. ztunnel sends the requests of every pod on
		// its node over one connection (110 pods a node by default), and
		// a client beyond the bound queues its streams, it does not fail.
		grpc.MaxConcurrentStreams(uint32(lim.MaxConcurrentStreams)),
		// A connection that has not finished its TLS handshake within
		// this is closed (grpc-go's default is 120s).
		grpc.ConnectionTimeout(10 * time.Second),
		// Reading 32 KiB at a time buys nothing for a request this small,
		// and the buffer is allocated for every connection.
		grpc.ReadBufferSize(16 << 10),
		// The write buffer goes back to a pool after each flush instead
		// of living as long as the connection.
		grpc.SharedWriteBuffer(true),
		// HTTP/2's default windows fit the largest request; a static
		// window spares a bandwidth-probing ping (a frame each way) per
		// connection.
		grpc.StaticStreamWindowSize(65535),
		grpc.StaticConnWindowSize(65535),
		// Handlers run on goroutines kept between requests, whose stacks
		// have already grown to what verification needs, instead of a
		// new goroutine growing its stack on every request. When all are
		// busy (waiting for a PKI), gRPC starts a goroutine as usual.
		grpc.NumStreamWorkers(uint32(16 * runtime.GOMAXPROCS(0))),
	}
}

// maxRequestSize bounds a CreateCertificate request: a CSR with an RSA-4096
// key and its metadata is under 8 KiB.
const maxRequestSize = 64 << 10
