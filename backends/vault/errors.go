package vault

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"regexp"
	"strings"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/meshca/broker/backends"
)

// responseError is Vault's answer reduced to one line: the API client's own
// error text spans several lines and repeats the URL, which reads badly in
// a gRPC status sent to a workload.
type responseError struct {
	status int
	msg    string
	err    *vaultapi.ResponseError
}

func (e *responseError) Error() string {
	if e.msg == "" {
		return fmt.Sprintf("Vault answered HTTP %d", e.status)
	}
	return fmt.Sprintf("Vault answered HTTP %d: %s", e.status, e.msg)
}

func (e *responseError) Unwrap() error { return e.err }

// errCredentials marks a problem with the broker's own credentials (a
// missing token file, an empty variable): neither retryable nor a refusal
// by the PKI, it needs an operator.
var errCredentials = errors.New("vault credentials unusable")

// errPermissionDenied marks a 403 before the caller decides whether a new
// login might cure it.
var errPermissionDenied = errors.New("permission denied by Vault")

// clean replaces the API client's multi-line ResponseError, wherever it
// sits in err's chain, by a one-line responseError. The auth libraries'
// wrapping text goes with it; callers say what they were doing instead.
func clean(err error) error {
	var ours *responseError
	if errors.As(err, &ours) {
		return err
	}
	var re *vaultapi.ResponseError
	if errors.As(err, &re) {
		return &responseError{status: re.StatusCode, msg: vaultMessage(re.Errors), err: re}
	}
	return err
}

// classify returns the backends error kind of an error from a Vault call.
// A 403 is reported as errPermissionDenied so that the caller can log in
// again; anything that is not an answer from Vault (dial errors, timeouts,
// resets, a proxy's garbage) is unavailable, because retrying is the only
// thing the broker can do about it.
func classify(err error) error {
	var pe *fs.PathError
	if errors.Is(err, errCredentials) || errors.As(err, &pe) {
		// The only files read during Vault calls are credentials.
		return errCredentials
	}
	var re *vaultapi.ResponseError
	if !errors.As(err, &re) {
		return backends.ErrUnavailable
	}
	switch {
	case re.StatusCode == http.StatusForbidden:
		return errPermissionDenied
	case re.StatusCode == http.StatusTooManyRequests:
		return backends.ErrThrottled
	case re.StatusCode >= 500,
		// 412: a performance standby has not caught up yet; it will.
		re.StatusCode == http.StatusPreconditionFailed:
		return backends.ErrUnavailable
	default:
		return backends.ErrRefused
	}
}

// wrap turns an error from a Vault call into the error Sign returns.
func wrap(what string, err error) error {
	err = clean(err)
	switch kind := classify(err); kind {
	case errPermissionDenied:
		return fmt.Errorf("vault: %s: %w: permission denied by Vault: %w", what, backends.ErrRefused, err)
	case errCredentials:
		return fmt.Errorf("vault: %s: %w", what, err)
	default:
		return fmt.Errorf("vault: %s: %w: %w", what, kind, err)
	}
}

var errorCount = regexp.MustCompile(`^\d+ errors? occurred:$`)

// vaultMessage joins Vault's error strings into one line, dropping the
// "1 error occurred:" headers and bullets of go-multierror.
func vaultMessage(errs []string) string {
	var parts []string
	for _, e := range errs {
		for _, line := range strings.Split(e, "\n") {
			line = strings.TrimSpace(line)
			if line == "" || errorCount.MatchString(line) {
				continue
			}
			parts = append(parts, strings.TrimPrefix(line, "* "))
		}
	}
	return strings.Join(parts, "; ")
}
