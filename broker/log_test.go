package broker

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"k8s.io/klog/v2"
)

// TestClientGoLogsAreStructured: what client-go logs through klog (here
// as its leader election does on a missing Lease namespace) comes out as
// one JSON line of the broker's logger, level and message kept.
func TestClientGoLogsAreStructured(t *testing.T) {
	var buf bytes.Buffer
	RouteClientGoLogs(slog.New(slog.NewJSONHandler(&buf, nil)))
	t.Cleanup(klog.ClearLogger)
	klog.ErrorS(nil, "Error initially creating lease lock", "lock", "istio-system/meshca-broker")
	klog.Infof("attempting to acquire leader lease %s", "istio-system/meshca-broker")
	klog.Flush()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2:\n%s", len(lines), buf.String())
	}
	for i, want := range []struct{ level, msg string }{
		{"ERROR", "Error initially creating lease lock"},
		{"INFO", "attempting to acquire leader lease istio-system/meshca-broker"},
	} {
		var rec map[string]any
		if err := json.Unmarshal([]byte(lines[i]), &rec); err != nil {
			t.Fatalf("line %d is not JSON: %q", i, lines[i])
		}
		if rec["level"] != want.level || rec["msg"] != want.msg || rec["component"] != "client-go" {
			t.Errorf("line %d = %v, want level %s, msg %q, component client-go", i, rec, want.level, want.msg)
		}
	}
}
