package awspca

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/meshca/broker/backends"
)

// Error codes that mean "slow down". Private CA itself answers
// ThrottlingException (not a modelled shape, so it arrives as a generic API
// error) when a per-operation rate is exceeded; the rest are what AWS front
// ends use generally.
var throttleCodes = map[string]bool{
	"ThrottlingException":                    true,
	"Throttling":                             true,
	"ThrottledException":                     true,
	"RequestThrottledException":              true,
	"TooManyRequestsException":               true,
	"RequestLimitExceeded":                   true,
	"ProvisionedThroughputExceededException": true,
	"SlowDown":                               true,
}

// Error codes of a hard quota: Private CA's LimitExceededException (e.g.
// the number of certificates a CA may issue) and the names other AWS
// services give the same thing. It does not clear by waiting a moment, so
// it is a refusal (FailedPrecondition), not throttling: retrying, by the
// broker or by the agent, would only add calls.
var quotaCodes = map[string]bool{
	"LimitExceededException":        true,
	"ServiceQuotaExceededException": true,
	"QuotaExceededException":        true,
}

// Error codes of a service-side failure worth retrying.
var unavailableCodes = map[string]bool{
	"ServiceUnavailable":          true,
	"ServiceUnavailableException": true,
	"InternalFailure":             true,
	"InternalServerError":         true,
	"InternalServiceException":    true,
	"RequestTimeout":              true,
	"RequestTimeoutException":     true,
	// Another request is changing the CA; the next attempt will see it done.
	"ConcurrentModificationException": true,
}

// classify wraps err, from the operation described by doing, in the
// backends error kind the server maps to a gRPC code, keeping AWS's
// code and message in the text.
func classify(doing string, err error) error {
	kind := kindOf(err)
	if code := errorCode(err); quotaCodes[code] {
		return fmt.Errorf("awspca: %s: %w: %w (%s is a hard quota of the Private CA account; retrying will not help: "+
			"see AWS's message for which quota, and raise it in Service Quotas or use another CA)", doing, kind, err, code)
	}
	return fmt.Errorf("awspca: %s: %w: %w", doing, kind, err)
}

// explainCSRRefusal adds to Private CA's refusal of a CSR with an empty
// subject and a non-critical subjectAltName extension which CSR it was:
// the request's names say whose it is (a workload's SPIFFE ID, or the DNS
// names of the broker's own serving certificate), and so who must change.
func explainCSRRefusal(err error, req *backends.Request) error {
	if !errors.Is(err, backends.ErrRefused) || !strings.Contains(err.Error(), "SAN extension critical") {
		return err
	}
	return fmt.Errorf("%w (%s)", err, sanCriticalHint(req.Template))
}

func sanCriticalHint(t *x509.Certificate) string {
	const rule = "has an empty subject and a non-critical subjectAltName extension; Private CA requires the extension to be critical then, as RFC 5280 does"
	var uris []string
	for _, u := range t.URIs {
		uris = append(uris, u.String())
	}
	switch {
	case len(uris) > 0:
		return fmt.Sprintf("the CSR for %s %s; whatever made the CSR must mark it critical: Istio sidecars and the broker's `broker check` do, older ztunnel builds do not",
			strings.Join(uris, ", "), rule)
	case len(t.DNSNames) > 0:
		return fmt.Sprintf("the broker's own CSR for its serving certificate (DNS names %s) %s; this broker build does not mark it so: upgrade the broker",
			strings.Join(t.DNSNames, ", "), rule)
	}
	return "the CSR " + rule
}

func kindOf(err error) error {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		code := apiErr.ErrorCode()
		switch {
		case quotaCodes[code]:
			return backends.ErrRefused
		case throttleCodes[code]:
			return backends.ErrThrottled
		case unavailableCodes[code]:
			return backends.ErrUnavailable
		}
		var re *smithyhttp.ResponseError
		if errors.As(err, &re) {
			switch status := re.HTTPStatusCode(); {
			case status == 429:
				return backends.ErrThrottled
			case status >= 500:
				return backends.ErrUnavailable
			}
		}
		if apiErr.ErrorFault() == smithy.FaultServer {
			return backends.ErrUnavailable
		}
		// MalformedCSR, InvalidArgs, InvalidState, InvalidRequest,
		// InvalidArn, ResourceNotFound, RequestFailed, AccessDenied,
		// Validation, signature and credential errors: the request as
		// made will not succeed by repeating it.
		return backends.ErrRefused
	}
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) {
		switch status := re.HTTPStatusCode(); {
		case status == 429:
			return backends.ErrThrottled
		case status >= 500:
			return backends.ErrUnavailable
		case status >= 400:
			return backends.ErrRefused
		}
	}
	// Transport failures (refused or dropped connections, DNS, TLS),
	// deadlines and responses that could not be read: the CA did not
	// answer.
	return backends.ErrUnavailable
}

// errorCode is the AWS error code of err, or "".
func errorCode(err error) string {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode()
	}
	return ""
}
