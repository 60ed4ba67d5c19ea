package loadgen

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/status"

	"github.com/meshca/broker/caclient"
)

// Target is the CA under load.
type Target struct {
	// Name labels the reports ("broker", "istio-ca").
	Name string
	// Addr is host:port of the CA's gRPC-over-TLS endpoint.
	Addr string
	// RootsPEM are the CA's roots: its TLS certificate is checked against
	// them, and every issued chain must end in one of them.
	RootsPEM []byte
	// ServerName checked on the CA's certificate (default
	// istiod.istio-system.svc, what the agent checks for a localhost address).
	ServerName string
	// ClusterID is sent as clusterid metadata when not empty (the agent
	// sends ISTIO_META_CLUSTER_ID, "Kubernetes" by default).
	ClusterID string
	// TrustDomain of the SPIFFE IDs the CA must certify (default cluster.local).
	TrustDomain string
}

// Mode is how requests are started.
type Mode string

const (
	// Burst starts every workload as fast as Concurrency callers allow (a
	// mass restart).
	Burst Mode = "burst"
	// Steady starts workloads at Rate per second (at most Concurrency in
	// flight); latency counts from each request's scheduled start, so time
	// spent waiting for a free caller shows.
	Steady Mode = "steady"
)

// ParseMode accepts "burst" and "steady".
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case Burst, Steady:
		return Mode(s), nil
	}
	return "", fmt.Errorf("unknown mode %q (burst or steady)", s)
}

// Options shape a run.
type Options struct {
	Mode Mode
	// Concurrency is the number of callers (default 16).
	Concurrency int
	// Rate is the steady mode's target in requests started per second.
	Rate float64
	// SharedConnections, when > 0, sends all requests over that many TLS
	// connections (round robin) instead of a fresh connection per workload.
	SharedConnections int
	// TTL is the requested validity (default 24h, the agent's SECRET_TTL).
	TTL time.Duration
	// Retry is the schedule on retryable codes (default caclient.AgentRetry);
	// NoRetry sends every request once.
	Retry   caclient.Retry
	NoRetry bool
	// RequestTimeout bounds one workload, retries included (default 30s).
	RequestTimeout time.Duration
	// Timeout bounds the whole run (default 10m): workloads not started
	// by then count as NotStarted.
	Timeout time.Duration
	// CAPID and APIServerPID name the processes whose CPU time is measured
	// (0: not measured).
	CAPID, APIServerPID int
}

func (o *Options) defaults() error {
	if o.Mode == "" {
		o.Mode = Burst
	}
	if _, err := ParseMode(string(o.Mode)); err != nil {
		return err
	}
	if o.Mode == Steady && o.Rate <= 0 {
		return errors.New("loadgen: steady mode needs a positive rate")
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	if o.TTL == 0 {
		o.TTL = 24 * time.Hour
	}
	if o.Retry == (caclient.Retry{}) {
		o.Retry = caclient.AgentRetry
	}
	if o.NoRetry {
		o.Retry = caclient.Retry{}
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = 30 * time.Second
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Minute
	}
	return nil
}

type job struct {
	i     int
	start time.Time // scheduled start (steady mode)
}

// Run sends one certificate request per workload to t and reports. Every
// workload must have been through PrepareKeys with t's trust domain. The
// error is for a run that could not start (bad options, roots, no keys);
// failed requests are in the report.
func Run(ctx context.Context, t Target, ws []*Workload, o Options) (*Report, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	if t.TrustDomain == "" {
		t.TrustDomain = "cluster.local"
	}
	if t.ServerName == "" {
		t.ServerName = caclient.DefaultServerName
	}
	roots, err := ParseRoots(t.RootsPEM)
	if err != nil {
		return nil, fmt.Errorf("loadgen: CA roots: %w", err)
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	server := newServerCheck(pool, t.ServerName)
	kt := KeyType("")
	for _, w := range ws {
		if w.Key == nil || w.CSRPEM == "" {
			return nil, errors.New("loadgen: workloads without keys: run PrepareKeys first")
		}
	}
	if len(ws) > 0 {
		kt = keyTypeOf(ws[0])
	}

	var shared []*caclient.Client
	for range o.SharedConnections {
		c, err := caclient.DialTLS(t.Addr, server.tlsConfig())
		if err != nil {
			return nil, err
		}
		defer c.Close()
		shared = append(shared, c)
	}

	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	// expired also looks at the clock: on a loaded host the context's timer
	// may fire late, and gRPC fails a call past its deadline at once.
	deadline, _ := ctx.Deadline()
	expired := func() bool { return ctx.Err() != nil || !time.Now().Before(deadline) }

	results := make([]Result, len(ws))
	for i := range results {
		results[i] = Result{Code: "NotStarted", Err: errors.New("the run's time bound passed before this workload started")}
	}
	// Every chain is verified, after the timed run: a restarting pod
	// checks its certificate on its own node, not on the CA's CPUs,
	// which the load generator here shares with the CA.
	type toVerify struct {
		chain []*x509.Certificate
		id    string
		at    time.Time
	}
	verifyAt := make([]toVerify, len(ws))
	jobs := make(chan job)
	var wg sync.WaitGroup
	one := func(j job) {
		w := ws[j.i]
		start := time.Now()
		if o.Mode == Steady {
			start = j.start
		}
		c := (*caclient.Client)(nil)
		if len(shared) > 0 {
			c = shared[j.i%len(shared)]
		} else {
			var err error
			if c, err = caclient.DialTLS(t.Addr, server.tlsConfig()); err != nil {
				results[j.i] = Result{Latency: time.Since(start), Code: "ClientError", Err: err}
				return
			}
			defer c.Close()
		}
		rctx, rcancel := context.WithTimeout(ctx, o.RequestTimeout)
		defer rcancel()
		id := w.SPIFFEID(t.TrustDomain)
		issued, attempts, err := c.CreateCertificateRetrying(rctx, caclient.Request{
			Key: w.Key, CSRPEM: w.CSRPEM, SPIFFEID: id, Token: w.Token, ClusterID: t.ClusterID, TTL: o.TTL,
		}, o.Retry)
		res := Result{Latency: time.Since(start), Attempts: attempts}
		switch {
		case err != nil:
			if s, ok := status.FromError(err); ok {
				res.Code = s.Code().String()
			} else {
				res.Code = "ClientError"
			}
			res.Err = err
		default:
			verifyAt[j.i] = toVerify{chain: issued.Chain, id: id, at: time.Now()}
		}
		results[j.i] = res
	}
	for range min(o.Concurrency, max(len(ws), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				if expired() {
					continue // the run's bound passed: NotStarted
				}
				one(j)
			}
		}()
	}

	meter := startCPU(o.CAPID, o.APIServerPID)
	t0 := time.Now()
	var interval time.Duration
	if o.Mode == Steady {
		interval = time.Duration(float64(time.Second) / o.Rate)
	}
dispatch:
	for i := range ws {
		j := job{i: i}
		if o.Mode == Steady {
			j.start = t0.Add(time.Duration(i) * interval)
			if d := time.Until(j.start); d > 0 {
				select {
				case <-ctx.Done():
					break dispatch
				case <-time.After(d):
				}
			}
		}
		if expired() {
			break dispatch
		}
		select {
		case <-ctx.Done():
			break dispatch
		case jobs <- j:
		}
	}
	close(jobs)
	wg.Wait()
	wall := time.Since(t0)
	var measured Report
	meter.stop(&measured)

	for i, v := range verifyAt {
		if v.chain == nil {
			continue
		}
		if err := VerifyChain(v.chain, ws[i].Key.Public(), v.id, roots, v.at); err != nil {
			results[i].Code, results[i].Err = "VerifyFailed", fmt.Errorf("%s: %w", v.id, err)
		}
	}

	r := Summarize(results, wall)
	r.CA, r.APIServer, r.Self = measured.CA, measured.APIServer, measured.Self
	r.CPUs, r.HostBusy, r.HostSteal = measured.CPUs, measured.HostBusy, measured.HostSteal
	r.Target, r.Mode, r.Concurrency, r.Rate, r.KeyType = t.Name, o.Mode, o.Concurrency, o.Rate, kt
	r.Connections = "fresh"
	if len(shared) > 0 {
		r.Connections = fmt.Sprintf("shared/%d", len(shared))
	}
	return &r, nil
}

func keyTypeOf(w *Workload) KeyType {
	if _, ok := w.Key.Public().(*rsa.PublicKey); ok {
		return RSA2048
	}
	return ECDSAP256
}
