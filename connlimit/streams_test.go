package connlimit

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

func TestStreamsBoundAndRelease(t *testing.T) {
	refused := 0
	s := &Streams{Max: 2, Refused: func() { refused++ }}
	open := func() (context.CancelFunc, error) {
		ctx, cancel := context.WithCancel(context.Background())
		_, err := s.Tap(ctx, &tap.Info{})
		return cancel, err
	}
	c1, err1 := open()
	_, err2 := open()
	_, err3 := open()
	if err1 != nil || err2 != nil {
		t.Fatalf("within the bound: %v, %v", err1, err2)
	}
	if status.Code(err3) != codes.ResourceExhausted || refused != 1 {
		t.Fatalf("beyond the bound: %v (refused %d), want ResourceExhausted", err3, refused)
	}
	// The stream's end (its context) frees its slot.
	c1()
	deadline := time.Now().Add(time.Second)
	for s.Open() != 1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if _, err := open(); err != nil || s.Open() != 2 {
		t.Fatalf("after a stream ended: %v, %d open", err, s.Open())
	}
}

func TestStreamsMaxAgeEndsTheStream(t *testing.T) {
	s := &Streams{Max: 10, MaxAge: 50 * time.Millisecond}
	ctx, err := s.Tap(context.Background(), &tap.Info{})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(time.Second):
		t.Fatal("a stream outlived MaxAge")
	}
	deadline := time.Now().Add(time.Second)
	for s.Open() != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if s.Open() != 0 {
		t.Fatalf("%d open after the stream's age ran out", s.Open())
	}
}
