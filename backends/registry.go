package backends

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"sync"
)

// Options is what a Factory gets to build its signer.
type Options struct {
	// Config is the backend's own section of the configuration file, as
	// JSON. Factories decode it strictly (unknown keys are errors naming
	// the key) with DecodeConfig.
	Config json.RawMessage
	// DataDir is a directory the backend may keep state in.
	DataDir string
	// Logger is the broker's logger.
	Logger *slog.Logger
}

// Factory builds a Signer from its configuration. It should validate the
// configuration and may contact the backend (bounded by ctx).
type Factory func(ctx context.Context, opts Options) (Signer, error)

var (
	mu        sync.RWMutex
	factories = map[string]Factory{}
	// checks decode a type's section without building anything, so that
	// the configuration is judged before any state is written.
	checks = map[string]func(json.RawMessage) error{}
)

// Register makes a backend available under a type name. It is called from
// the backend package's init function; registering a name twice panics
// because it is a programming error.
func Register(typ string, f Factory) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := factories[typ]; dup {
		panic("backends: type registered twice: " + typ)
	}
	factories[typ] = f
}

// RegisterConfig registers a backend whose factory takes its own
// configuration section already decoded, strictly, into C.
func RegisterConfig[C any](typ string, build func(ctx context.Context, cfg C, opts Options) (Signer, error)) {
	mu.Lock()
	checks[typ] = func(raw json.RawMessage) error {
		var cfg C
		return DecodeStrictAt("backend."+typ+".", raw, &cfg)
	}
	mu.Unlock()
	Register(typ, func(ctx context.Context, opts Options) (Signer, error) {
		var cfg C
		if err := DecodeConfig(opts.Config, &cfg); err != nil {
			return nil, err
		}
		return build(ctx, cfg, opts)
	})
}

// Types lists the registered type names, sorted.
func Types() []string {
	mu.RLock()
	defer mu.RUnlock()
	out := make([]string, 0, len(factories))
	for t := range factories {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// CheckConfig decodes a type's configuration section as its factory
// would, without building anything: an unknown key or a bad value is
// an error naming the key (backend.<type>.<key>). Types registered without
// RegisterConfig are only checked when built.
func CheckConfig(typ string, raw json.RawMessage) error {
	mu.RLock()
	check, ok := checks[typ]
	mu.RUnlock()
	if !ok {
		return nil
	}
	return check(raw)
}

// New builds the signer registered under typ.
func New(ctx context.Context, typ string, opts Options) (Signer, error) {
	mu.RLock()
	f, ok := factories[typ]
	mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("unknown backend type %q (known: %v)", typ, Types())
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s, err := f(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", typ, err)
	}
	return s, nil
}
