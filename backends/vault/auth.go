package vault

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/api/auth/approle"
	k8sauth "github.com/hashicorp/vault/api/auth/kubernetes"
)

// loginMethod obtains a fresh Vault token.
type loginMethod interface {
	// login returns a token, and the login answer's auth block when there
	// is one (nil for a plain token, whose lifetime is then looked up).
	login(ctx context.Context, lc *vaultapi.Client) (token string, auth *vaultapi.SecretAuth, err error)
	// describe names the method and its source for logs and errors.
	describe() string
}

type tokenLogin struct{ cfg TokenAuth }

func (t tokenLogin) describe() string {
	switch {
	case t.cfg.TokenFile != "":
		return "token from file " + t.cfg.TokenFile
	case t.cfg.TokenEnv != "":
		return "token from $" + t.cfg.TokenEnv
	}
	return "token from configuration"
}

func (t tokenLogin) login(context.Context, *vaultapi.Client) (string, *vaultapi.SecretAuth, error) {
	var tok string
	switch {
	case t.cfg.TokenFile != "":
		b, err := os.ReadFile(t.cfg.TokenFile)
		if err != nil {
			return "", nil, fmt.Errorf("%w: reading Vault token: %w", errCredentials, err)
		}
		tok = string(b)
	case t.cfg.TokenEnv != "":
		tok = os.Getenv(t.cfg.TokenEnv)
	default:
		tok = t.cfg.Token
	}
	if tok = strings.TrimSpace(tok); tok == "" {
		return "", nil, fmt.Errorf("%w: %s: token is empty", errCredentials, t.describe())
	}
	return tok, nil, nil
}

type appRoleLogin struct{ cfg AppRoleAuth }

func (a appRoleLogin) describe() string { return "approle at auth/" + a.cfg.MountPath }

func (a appRoleLogin) login(ctx context.Context, lc *vaultapi.Client) (string, *vaultapi.SecretAuth, error) {
	m, err := approle.NewAppRoleAuth(a.cfg.RoleID, &approle.SecretID{
		FromString: a.cfg.SecretID, FromFile: a.cfg.SecretIDFile, FromEnv: a.cfg.SecretIDEnv,
	}, approle.WithMountPath(a.cfg.MountPath))
	if err != nil {
		return "", nil, err
	}
	return loginWith(ctx, lc, m)
}

type kubernetesLogin struct{ cfg KubernetesAuth }

func (k kubernetesLogin) describe() string {
	return fmt.Sprintf("kubernetes at auth/%s, role %s, token %s", k.cfg.MountPath, k.cfg.Role, k.cfg.TokenFile)
}

func (k kubernetesLogin) login(ctx context.Context, lc *vaultapi.Client) (string, *vaultapi.SecretAuth, error) {
	// Built per login: the library reads the token file only when
	// constructed, and projected service-account tokens rotate.
	m, err := k8sauth.NewKubernetesAuth(k.cfg.Role,
		k8sauth.WithServiceAccountTokenPath(k.cfg.TokenFile), k8sauth.WithMountPath(k.cfg.MountPath))
	if err != nil {
		return "", nil, err
	}
	return loginWith(ctx, lc, m)
}

func loginWith(ctx context.Context, lc *vaultapi.Client, m vaultapi.AuthMethod) (string, *vaultapi.SecretAuth, error) {
	sec, err := m.Login(ctx, lc)
	if err != nil {
		return "", nil, err
	}
	if sec == nil || sec.Auth == nil || sec.Auth.ClientToken == "" {
		return "", nil, errors.New("Vault's login answer holds no token")
	}
	return sec.Auth.ClientToken, sec.Auth, nil
}

func newLoginMethod(a AuthConfig) loginMethod {
	switch a.Method {
	case "approle":
		return appRoleLogin{*a.AppRole}
	case "kubernetes":
		return kubernetesLogin{*a.Kubernetes}
	default:
		return tokenLogin{*a.Token}
	}
}

// session is the token currently in use.
type session struct {
	gen       uint64 // 0: never logged in
	obtained  time.Time
	ttl       time.Duration // 0: does not expire (or unknown)
	loginTTL  time.Duration // the TTL the token had when obtained
	renewable bool
}

// authenticator keeps the client's token valid: it logs in lazily, again
// when Vault says permission denied, and renews (or replaces) the token
// in the background before it expires.
type authenticator struct {
	method  loginMethod
	client  *vaultapi.Client // carries the token for every other call
	lc      *vaultapi.Client // tokenless, for login calls
	timeout time.Duration
	log     *slog.Logger

	// mu serialises logins and renewals; sess is read without it so that
	// requests never wait behind a slow renewal.
	mu   sync.Mutex
	sess atomic.Pointer[session]

	kick chan struct{}
	stop chan struct{}
	done chan struct{}
}

func newAuthenticator(m loginMethod, client, lc *vaultapi.Client, timeout time.Duration, log *slog.Logger) *authenticator {
	return &authenticator{method: m, client: client, lc: lc, timeout: timeout, log: log,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
}

func (a *authenticator) current() session {
	if s := a.sess.Load(); s != nil {
		return *s
	}
	return session{}
}

// ensure logs in if nothing has yet.
func (a *authenticator) ensure(ctx context.Context) error {
	if a.current().gen != 0 {
		return nil
	}
	return a.relogin(ctx, 0)
}

// relogin logs in unless another caller already did after seenGen, so a
// burst of requests failing together causes one login, not one each.
func (a *authenticator) relogin(ctx context.Context, seenGen uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.current().gen != seenGen {
		return nil
	}
	return a.loginLocked(ctx)
}

func (a *authenticator) loginLocked(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	tok, auth, err := a.method.login(ctx, a.lc)
	if err != nil {
		return fmt.Errorf("logging in to Vault (%s): %w", a.method.describe(), clean(err))
	}
	s := session{gen: a.current().gen + 1, obtained: time.Now()}
	if auth != nil {
		s.ttl = time.Duration(auth.LeaseDuration) * time.Second
		s.renewable = auth.Renewable
	}
	a.client.SetToken(tok)
	if auth == nil {
		// A plain token: ask Vault what it is. Failing to learn is not
		// fatal (a token may lack lookup-self); it is then never renewed.
		if sec, err := a.client.Auth().Token().LookupSelfWithContext(ctx); err == nil {
			s.ttl, _ = sec.TokenTTL()
			s.renewable, _ = sec.TokenIsRenewable()
		} else if classify(err) == errPermissionDenied {
			a.log.Warn("vault: Vault refused to look up the configured token; it may be invalid or lack the default policy, and will not be renewed", "error", clean(err))
		} else {
			a.log.Debug("vault: could not look up the configured token; it will not be renewed", "error", clean(err))
		}
	}
	s.loginTTL = s.ttl
	a.sess.Store(&s)
	a.log.Info("vault: logged in", "method", a.method.describe(), "ttl", s.ttl, "renewable", s.renewable)
	select {
	case a.kick <- struct{}{}:
	default:
	}
	return nil
}

// maintain runs until close, renewing or replacing the token at two thirds
// of its lifetime: a broker that signs rarely must still hold a valid
// token when the next request arrives.
func (a *authenticator) maintain() {
	defer close(a.done)
	backoff := time.Duration(0)
	for {
		s := a.current()
		var wake <-chan time.Time
		switch {
		case backoff > 0:
			wake = time.After(backoff)
		case s.gen != 0 && s.ttl > 0 && (s.renewable || a.canReplace()):
			wake = time.After(max(time.Until(s.obtained.Add(s.ttl*2/3)), 500*time.Millisecond))
		}
		select {
		case <-a.stop:
			return
		case <-a.kick:
			backoff = 0
			continue
		case <-wake:
		}
		if err := a.refresh(s); err != nil {
			backoff = min(max(2*backoff, time.Second), time.Minute)
			a.log.Warn("vault: keeping the token valid failed; will retry", "error", err, "retry_in", backoff)
			continue
		}
		backoff = 0
	}
}

// canReplace says whether a new login can produce a new token. A token
// from configuration cannot; one from a file or variable may have been
// rotated, but re-reading it on a timer only helps if it changed, which
// the 403 path already handles.
func (a *authenticator) canReplace() bool {
	_, isToken := a.method.(tokenLogin)
	return !isToken
}

// refresh renews the token of session s, or logs in again when it cannot
// be renewed any more (its max TTL is near) and the method allows it.
func (a *authenticator) refresh(s session) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.current().gen != s.gen {
		return nil // a login happened meanwhile
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	if s.renewable {
		sec, err := a.client.Auth().Token().RenewSelfWithContext(ctx, int(s.loginTTL/time.Second))
		if err == nil && sec != nil && sec.Auth != nil {
			ttl := time.Duration(sec.Auth.LeaseDuration) * time.Second
			// Vault caps renewals at the token's max TTL: once a renewal
			// no longer buys a third of the original lifetime, replace
			// the token instead of renewing ever more often.
			if ttl >= s.loginTTL/3 || !a.canReplace() {
				renewed := s
				renewed.obtained, renewed.ttl = time.Now(), ttl
				a.sess.Store(&renewed)
				a.log.Debug("vault: token renewed", "ttl", ttl)
				return nil
			}
		} else if err != nil && !a.canReplace() {
			return fmt.Errorf("renewing the Vault token: %w", clean(err))
		}
	}
	if !a.canReplace() {
		return nil
	}
	return a.loginLocked(ctx)
}

func (a *authenticator) close() {
	select {
	case <-a.stop:
	default:
		close(a.stop)
	}
	<-a.done
}
