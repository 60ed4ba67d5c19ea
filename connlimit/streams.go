package connlimit

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

// Streams bounds the gRPC streams open across every connection, and how
// long one may stay open. Per-connection bounds multiply by the number of
// connections; this one does not: a stream holds its decoded headers and
// a goroutine from its HEADERS frame on, also when its client never sends
// the request body, so Max bounds that memory in all.
type Streams struct {
	// Max is the bound on open streams; MaxAge the time a stream may stay
	// open (its context ends then, which ends the stream).
	Max    int64
	MaxAge time.Duration
	// Refused, if set, is called for each stream refused.
	Refused func()

	open atomic.Int64
}

// Tap is a grpc.InTapHandle: it runs when a stream's headers have been
// read, before the stream is registered or any handler runs, and refuses
// it with ResourceExhausted when Max are open. The count is released when
// the stream's context ends, which grpc does for every stream it ends.
func (s *Streams) Tap(ctx context.Context, _ *tap.Info) (context.Context, error) {
	if n := s.open.Add(1); s.Max > 0 && n > s.Max {
		s.open.Add(-1)
		if s.Refused != nil {
			s.Refused()
		}
		return nil, status.Error(codes.ResourceExhausted, fmt.Sprintf("the broker has %d requests open, its limit; retry in a few seconds", s.Max))
	}
	var cancel context.CancelFunc = func() {}
	if s.MaxAge > 0 {
		ctx, cancel = context.WithTimeout(ctx, s.MaxAge)
	}
	context.AfterFunc(ctx, func() {
		cancel()
		s.open.Add(-1)
	})
	return ctx, nil
}

// Open is the number of streams open, for tests and metrics.
func (s *Streams) Open() int64 { return s.open.Load() }
