package backends

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	kjson "sigs.k8s.io/json"
)

// DecodeConfig decodes a backend's configuration section into dst, refusing
// unknown keys so that a typo names itself instead of being ignored.
func DecodeConfig(raw json.RawMessage, dst any) error {
	if err := DecodeStrict(raw, dst); err != nil {
		return fmt.Errorf("decoding configuration: %w", err)
	}
	return nil
}

// DecodeStrict decodes JSON into dst as a configuration file should be
// read: keys match their names exactly (encoding/json alone would take
// "maxTTl" for "maxTTL"), an unknown or repeated key is an error, and
// every error names the key it is about ("policy.maxTTL: ..."). Empty
// input and null leave dst as it is.
func DecodeStrict(raw []byte, dst any) error { return DecodeStrictAt("", raw, dst) }

// DecodeStrictAt is DecodeStrict for a section whose keys are named
// prefix + key in errors (prefix "backend.vault." for its section).
func DecodeStrictAt(prefix string, raw []byte, dst any) error {
	if t := bytes.TrimSpace(raw); len(t) == 0 || string(t) == "null" {
		raw = []byte("{}")
	}
	strict, err := kjson.UnmarshalStrict(raw, dst, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return fmt.Errorf("%s%s: %s", prefix, te.Field, typeProblem(te))
		}
		if prefix != "" {
			return fmt.Errorf("%s: %s", strings.TrimSuffix(prefix, "."), strings.TrimPrefix(err.Error(), "json: "))
		}
		return errors.New(strings.TrimPrefix(err.Error(), "json: "))
	}
	if len(strict) > 0 {
		msgs := make([]string, len(strict))
		for i, e := range strict {
			// `unknown field "a.b"` -> `unknown key "<prefix>a.b"`
			m := strings.Replace(strings.TrimPrefix(e.Error(), "json: "), "field", "key", 1)
			msgs[i] = strings.Replace(m, `"`, `"`+prefix, 1)
		}
		return errors.New(strings.Join(msgs, "; "))
	}
	return nil
}

// typeProblem says what was wrong with a value of the wrong type.
func typeProblem(te *json.UnmarshalTypeError) string {
	if strings.HasPrefix(te.Value, "duration ") {
		return te.Value // the duration's own message, reason included
	}
	if te.Value == "bool" && te.Type != nil && te.Type.Kind() == reflect.String {
		return "a boolean is not a valid string (YAML reads unquoted on, off, yes and no as booleans: quote the value)"
	}
	return fmt.Sprintf("%s is not a valid %s", te.Value, typeName(te.Type))
}

func typeName(t reflect.Type) string {
	if t == nil {
		return "value"
	}
	switch t.Kind() {
	case reflect.Slice, reflect.Array:
		return "list"
	case reflect.Map, reflect.Struct:
		return "section"
	case reflect.Bool:
		return "boolean (true or false)"
	case reflect.String:
		return "string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	}
	return t.String()
}

// Duration is a time.Duration that reads from configuration as a Go
// duration string ("30s", "24h").
type Duration struct{ time.Duration }

// UnmarshalJSON accepts "1h30m" style strings.
// Its errors are *json.UnmarshalTypeError, which the decoder completes
// with the key they are about.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return &json.UnmarshalTypeError{Value: fmt.Sprintf("duration %s (a duration is a string such as \"30s\")", b), Type: durationType}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return &json.UnmarshalTypeError{Value: fmt.Sprintf("duration %q (%s)", s, strings.TrimPrefix(err.Error(), "time: ")), Type: durationType}
	}
	d.Duration = v
	return nil
}

var durationType = reflect.TypeOf(time.Duration(0))

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }
