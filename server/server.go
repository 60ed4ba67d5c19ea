// Package server is the broker's Istio certificate endpoint: it implements
// istio.v1.auth.IstioCertificateService/CreateCertificate, and its issue
// path reads top to bottom: authenticate, whom, authorize, budget, sign,
// verify, respond.
// It is also the one place where errors become gRPC status codes.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshca/broker/authn"
	"github.com/meshca/broker/backends"
	"github.com/meshca/broker/budget"
	"github.com/meshca/broker/impersonation"
	"github.com/meshca/broker/issuance"
	"github.com/meshca/broker/policy"
	authv1 "github.com/meshca/broker/proto/istio/v1/auth"
	"github.com/meshca/broker/trust"
	"github.com/meshca/broker/verify"
)

// Config wires the server's parts.
type Config struct {
	Authenticator authn.Authenticator
	Policy        *policy.Policy
	Signer        backends.Signer
	// Trust is the trust bundle: what issued chains must verify to, and
	// the last element of every response.
	Trust *trust.Bundle
	// SignTimeout bounds how long a request waits for its backend
	// signing, retries included. A signing that takes longer goes on for
	// the agent's retry of the same request to collect (Issuance).
	SignTimeout time.Duration
	// Issuance shares one signing between an agent's retries of the same
	// request; nil builds one with its defaults around Signer.
	Issuance *issuance.Cache
	// Budget bounds the new signings per identity (cluster and SPIFFE
	// ID); nil: no bound.
	Budget *budget.Budget
	// Issuers, if set, learns the CA above every leaf issued (renewal
	// with a client certificate is allowed only through those).
	Issuers *trust.Issuers
	// Impersonation decides whom a certificate is for when a node agent
	// asks for another workload; nil refuses every such request.
	Impersonation Impersonator
	Logger        *slog.Logger
	Metrics       *Metrics
}

// Impersonator resolves whom a certificate is for.
type Impersonator interface {
	Resolve(caller *authn.Identity, md *structpb.Struct) (*authn.Identity, error)
}

// Server implements IstioCertificateService.
type Server struct {
	authv1.UnimplementedIstioCertificateServiceServer
	cfg Config
}

// New returns a server; every part of cfg but Logger and Metrics is required.
func New(cfg Config) (*Server, error) {
	if cfg.Authenticator == nil || cfg.Policy == nil || cfg.Signer == nil || cfg.Trust == nil {
		return nil, errors.New("server: authenticator, policy, signer and trust bundle are all required")
	}
	if cfg.SignTimeout <= 0 {
		cfg.SignTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.Impersonation == nil {
		td := cfg.Policy.TrustDomain()
		imp, err := impersonation.New(impersonation.Config{TrustDomain: td})
		if err != nil {
			return nil, err
		}
		cfg.Impersonation = imp
	}
	if cfg.Issuance == nil {
		cfg.Issuance = issuance.New(cfg.Signer, issuance.Config{SignTimeout: max(time.Minute, cfg.SignTimeout)})
	}
	return &Server{cfg: cfg}, nil
}

// CreateCertificate issues a workload certificate.
func (s *Server) CreateCertificate(ctx context.Context, req *authv1.IstioCertificateRequest) (*authv1.IstioCertificateResponse, error) {
	a := s.newAudit(ctx)

	// 1. Authenticate: who is calling, in which cluster?
	caller, err := callerOf(ctx)
	if err != nil {
		return nil, a.refuse(status.Error(codes.InvalidArgument, err.Error()))
	}
	id, err := s.cfg.Authenticator.Authenticate(ctx, caller)
	if err != nil {
		return nil, a.refuse(authnStatus(err))
	}
	a.identity(id)

	// 2. Whom is it for: the caller, or the workload a node agent (ambient
	// ztunnel) asks for on its own node.
	if id, err = s.cfg.Impersonation.Resolve(id, req.GetMetadata()); err != nil {
		return nil, a.refuse(impersonationStatus(err))
	}
	a.impersonation(id)

	// 3. Authorize: what may the certificate say?
	decision, err := s.cfg.Policy.Authorize(id, policy.Request{
		CSRPEM:          req.GetCsr(),
		ValiditySeconds: req.GetValidityDuration(),
		Metadata:        req.GetMetadata(),
	})
	if err != nil {
		return nil, a.refuse(policyStatus(err))
	}
	a.decision(decision)

	// 4. Budget: a new signing costs the identity one token; a retry that
	// joins or reuses a signing costs nothing, so issuance charges it when,
	// and only when, it starts one.
	charge := s.budgetOf(id)

	// 5. Sign: the backend issues it, once for this request and its
	// retries; signReq is the request it was issued for.
	signCtx, cancel := context.WithTimeout(ctx, s.cfg.SignTimeout)
	signReq, issued, outcome, err := s.cfg.Issuance.Sign(signCtx, &backends.Request{CSR: decision.CSR, Template: decision.Template}, charge)
	cancel()
	a.signed(outcome, err)
	if err != nil {
		return nil, a.refuse(s.signStatus(ctx, err))
	}

	// 6. Verify: nothing the policy did not approve leaves the broker.
	bundle := s.cfg.Trust.Current()
	if bundle == nil {
		return nil, a.refuse(status.Error(codes.Unavailable, "trust bundle not loaded yet"))
	}
	chain, err := verify.Chain(signReq, issued, bundle.Roots, time.Now())
	if err != nil {
		// The backend may have moved to a root the bundle has not
		// picked up yet: look again now rather than at the next refresh.
		s.cfg.Trust.RefreshSoon()
		a.log(slog.LevelError, "backend returned a certificate that failed verification; nothing was returned", slog.Any("error", err))
		return nil, a.refuse(status.Error(codes.Internal, "the certificate authority returned a certificate that failed the broker's verification; nothing was issued"))
	}

	if len(chain) > 1 && s.cfg.Issuers != nil {
		s.cfg.Issuers.Learn(chain[1])
	}

	// 7. Respond as istiod does: the leaf, its intermediates, and last the
	// whole trust bundle in one element (the agent and ztunnel take their
	// roots from it, so every root the mesh trusts travels with every
	// certificate, which is what makes a root rotation seamless).
	a.issued(chain[0])
	return &authv1.IstioCertificateResponse{CertChain: verify.Response(chain, bundle.PEM)}, nil
}

// callerOf collects what the transport says about the caller.
func callerOf(ctx context.Context) (*authn.Request, error) {
	r := &authn.Request{}
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if scheme, tok, ok := strings.Cut(v, " "); ok && strings.EqualFold(scheme, "bearer") {
			r.BearerToken = strings.TrimSpace(tok)
			break
		}
	}
	switch v := md.Get("clusterid"); len(v) {
	case 0:
	case 1:
		r.ClusterID = v[0]
	default:
		// Which one would the token be checked against? Refuse rather
		// than guess.
		return nil, fmt.Errorf("clusterid metadata has %d values %q; send exactly one", len(v), v)
	}
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			r.PeerCertificates = ti.State.PeerCertificates
		}
	}
	return r, nil
}

func authnStatus(err error) error {
	if errors.Is(err, authn.ErrUnavailable) {
		return status.Error(codes.Unavailable, err.Error())
	}
	return status.Error(codes.Unauthenticated, err.Error())
}

func impersonationStatus(err error) error {
	if errors.Is(err, impersonation.ErrUnavailable) {
		return status.Error(codes.Unavailable, err.Error())
	}
	return status.Error(codes.PermissionDenied, err.Error())
}

func policyStatus(err error) error {
	if errors.Is(err, policy.ErrInvalid) {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return status.Error(codes.PermissionDenied, err.Error())
}

// budgetOf is the charge for a new signing for id: keyed by cluster and
// SPIFFE ID, so that a workload compromised in one cluster cannot spend
// the budget of the same identity in another.
func (s *Server) budgetOf(id *authn.Identity) issuance.Admit {
	if s.cfg.Budget == nil {
		return nil
	}
	key := id.Cluster + "/" + id.ID.String()
	return func() error { return s.cfg.Budget.Charge(key) }
}

// signStatus maps the refusals of the budget and the in-flight bound, then
// the backend's errors.
func (s *Server) signStatus(ctx context.Context, err error) error {
	var ex *budget.Exhausted
	switch {
	case errors.As(err, &ex):
		s.cfg.Metrics.refused("identity_budget")
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, issuance.ErrBusy):
		s.cfg.Metrics.refused("signings_in_flight")
		return status.Error(codes.ResourceExhausted, err.Error())
	}
	return backendStatus(ctx, err)
}

func backendStatus(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, backends.ErrThrottled):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, backends.ErrUnavailable):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, backends.ErrRefused):
		return status.Error(codes.FailedPrecondition, err.Error())
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	case errors.Is(err, context.DeadlineExceeded):
		// Our own sign timeout, not the caller's: the backend is too slow.
		// The signing goes on, and the agent's retry collects it.
		return status.Error(codes.Unavailable, fmt.Sprintf("certificate authority did not answer in time: %v", err))
	}
	return status.Error(codes.Internal, fmt.Sprintf("signing failed: %v", err))
}
