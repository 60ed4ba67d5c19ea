package awspca

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// checkSigV4 verifies an AWS Signature Version 4 Authorization header the way
// the service front end does: the credential scope must name this region
// and acm-pca, the access key must be known, X-Amz-Date must be within five
// minutes, and the signature over the signed headers and the body's SHA-256
// must match. It returns the error type and message the service would.
func (s *Server) checkSigV4(r *http.Request, body []byte) (errType, msg string) {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return "MissingAuthenticationTokenException", "Missing Authentication Token"
	}
	const algo = "AWS4-HMAC-SHA256"
	if !strings.HasPrefix(auth, algo+" ") {
		return "IncompleteSignatureException", "Authorization header requires AWS4-HMAC-SHA256 as the algorithm."
	}
	fields := map[string]string{}
	for _, part := range strings.Split(strings.TrimPrefix(auth, algo+" "), ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if ok {
			fields[k] = v
		}
	}
	cred, signed, sig := fields["Credential"], fields["SignedHeaders"], fields["Signature"]
	if cred == "" || signed == "" || sig == "" {
		return "IncompleteSignatureException", "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters."
	}
	scope := strings.Split(cred, "/")
	if len(scope) != 5 || scope[4] != "aws4_request" {
		return "IncompleteSignatureException", "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term."
	}
	akid, date, region, service := scope[0], scope[1], scope[2], scope[3]
	if service != "acm-pca" {
		return "InvalidSignatureException", "Credential should be scoped to correct service: 'acm-pca'."
	}
	if region != s.opts.Region {
		return "InvalidSignatureException", fmt.Sprintf("Credential should be scoped to a valid region, not '%s'.", region)
	}
	secret, ok := s.opts.Credentials[akid]
	if !ok {
		return "UnrecognizedClientException", "The security token included in the request is invalid."
	}
	amzDate := r.Header.Get("X-Amz-Date")
	t, err := time.Parse("20060102T150405Z", amzDate)
	if err != nil {
		return "IncompleteSignatureException", "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
	}
	if d := time.Since(t); d > 5*time.Minute || d < -5*time.Minute {
		return "InvalidSignatureException", fmt.Sprintf("Signature expired: %s is now earlier than %s (%s - 5 min.)",
			amzDate, time.Now().UTC().Add(-5*time.Minute).Format("20060102T150405Z"), time.Now().UTC().Format("20060102T150405Z"))
	}
	if !strings.HasPrefix(amzDate, date) {
		return "InvalidSignatureException", "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP."
	}
	names := strings.Split(signed, ";")
	if !sort.StringsAreSorted(names) {
		return "InvalidSignatureException", "The request signature we calculated does not match the signature you provided."
	}
	var canon strings.Builder
	canon.WriteString(r.Method + "\n" + r.URL.EscapedPath() + "\n" + r.URL.RawQuery + "\n")
	for _, name := range names {
		var vals []string
		switch name {
		case "host":
			vals = []string{r.Host}
		case "content-length":
			vals = r.Header.Values("Content-Length")
			if len(vals) == 0 {
				vals = []string{strconv.Itoa(len(body))}
			}
		default:
			vals = r.Header.Values(name)
		}
		for i := range vals {
			vals[i] = strings.Join(strings.Fields(vals[i]), " ")
		}
		canon.WriteString(name + ":" + strings.Join(vals, ",") + "\n")
	}
	payload := sha256.Sum256(body)
	canon.WriteString("\n" + signed + "\n" + hex.EncodeToString(payload[:]))
	creq := sha256.Sum256([]byte(canon.String()))
	toSign := algo + "\n" + amzDate + "\n" + strings.Join(scope[1:], "/") + "\n" + hex.EncodeToString(creq[:])
	key := []byte("AWS4" + secret)
	for _, p := range []string{date, region, service, "aws4_request"} {
		key = hmacSHA256(key, p)
	}
	want := hex.EncodeToString(hmacSHA256(key, toSign))
	if !hmac.Equal([]byte(want), []byte(sig)) {
		return "InvalidSignatureException", "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
	}
	return "", ""
}

func hmacSHA256(key []byte, data string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(data))
	return h.Sum(nil)
}
