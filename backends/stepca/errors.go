package stepca

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/smallstep/certificates/errs"

	"github.com/meshca/broker/backends"
)

// statusKey carries a *int through a request's context so the transport
// can record the HTTP status: the ca client drops it when an error body
// is not step-ca's JSON (a proxy's 502 page, say).
type statusKey struct{}

type statusRecorder struct{ next http.RoundTripper }

func (r statusRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.next.RoundTrip(req)
	if resp != nil {
		if p, ok := req.Context().Value(statusKey{}).(*int); ok {
			*p = resp.StatusCode
		}
	}
	return resp, err
}

// caError is step-ca's refusal in one line.
type caError struct {
	status int
	msg    string
	err    error
}

func (e *caError) Error() string {
	if e.msg == "" {
		return fmt.Sprintf("step-ca answered HTTP %d", e.status)
	}
	return fmt.Sprintf("step-ca answered HTTP %d: %s", e.status, e.msg)
}

func (e *caError) Unwrap() error { return e.err }

// classify wraps err from a CA call with its backends kind. status is the
// HTTP status seen on the wire (0 if no answer arrived). Anything that is
// not an HTTP answer (refused connections, timeouts, resets) is unavailable.
func classify(err error, status int) error {
	var se *errs.Error
	if errors.As(err, &se) && se.StatusCode() != 0 {
		status = se.StatusCode()
	}
	if status == 0 {
		return fmt.Errorf("%w: %w", backends.ErrUnavailable, err)
	}
	d := &caError{status: status, err: err}
	if se != nil {
		d.msg = strings.TrimSpace(se.Message())
	} else {
		d.msg = err.Error()
	}
	switch {
	case status == http.StatusTooManyRequests:
		return fmt.Errorf("%w: %w", backends.ErrThrottled, d)
	case status >= 500:
		return fmt.Errorf("%w: %w", backends.ErrUnavailable, d)
	case status >= 400:
		return fmt.Errorf("%w: %w", backends.ErrRefused, d)
	}
	// A 2xx or 3xx with an error: the body did not parse. Retrying may
	// reach a healthy instance.
	return fmt.Errorf("%w: %w", backends.ErrUnavailable, d)
}
