package broker

import (
	"log/slog"
	"os"

	"k8s.io/klog/v2"

	"github.com/meshca/broker/config"
)

// NewLogger builds the process logger from the log section.
func NewLogger(c config.Log) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, opts))
}

// RouteClientGoLogs sends what client-go logs through klog (leader
// election, watch failures, throttling) to log, as structured lines
// like the broker's own, instead of klog's plain text on stderr between
// the JSON lines. It changes process-wide state: call it once, from main.
func RouteClientGoLogs(log *slog.Logger) {
	klog.SetSlogLogger(log.With("component", "client-go"))
}
