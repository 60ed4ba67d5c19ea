package awspca

import (
	"errors"
	"fmt"
	"strings"

	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/meshca/broker/backends"
)

// Error codes that mean "slow down". Private CA itself answers
// ThrottlingException (not a modelled shape, so it arrives as a generic API
// error) and LimitExceededException (a quota); the rest are what AWS front
// ends use generally.
var throttleCodes = map[string]bool{
	"ThrottlingException":                    true,
	"Throttling":                             true,
	"ThrottledException":                     true,
	"RequestThrottledException":              true,
	"TooManyRequestsException":               true,
	"RequestLimitExceeded":                   true,
	"LimitExceededException":                 true,
	"ProvisionedThroughputExceededException": true,
	"SlowDown":                               true,
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
	if kind == backends.ErrRefused && strings.Contains(err.Error(), "SAN extension critical") {
		// The workload's CSR, not the broker, is what Private CA objects
		// to; say which clients produce such CSRs so the operator can act.
		return fmt.Errorf("awspca: %s: %w: %w (the workload's CSR has an empty subject and a non-critical subjectAltName; Private CA requires the SAN extension to be critical then, as RFC 5280 says: Istio sidecars mark it so, older ztunnel builds do not)", doing, kind, err)
	}
	return fmt.Errorf("awspca: %s: %w: %w", doing, kind, err)
}

func kindOf(err error) error {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		code := apiErr.ErrorCode()
		switch {
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
