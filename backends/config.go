package backends

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// DecodeConfig decodes a backend's configuration section into dst, refusing
// unknown keys so that a typo names itself instead of being ignored.
func DecodeConfig(raw json.RawMessage, dst any) error {
	if len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null" {
		raw = json.RawMessage("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return fmt.Errorf("decoding configuration: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	return nil
}

// Duration is a time.Duration that reads from configuration as a Go
// duration string ("30s", "24h").
type Duration struct{ time.Duration }

// UnmarshalJSON accepts "1h30m" style strings.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"30s\": %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }
