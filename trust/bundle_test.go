package trust

import (
	"context"
	"crypto/x509"
	"errors"
	"testing"
	"time"
)

func TestAnchorsKeepLastGoodSetAndBackOff(t *testing.T) {
	good := []*x509.Certificate{{Raw: []byte{1}}}
	var calls int
	var fail bool
	a := NewAnchors(func(context.Context) ([]*x509.Certificate, error) {
		calls++
		if fail {
			return nil, errors.New("backend down")
		}
		return good, nil
	}, time.Nanosecond, nil)
	ctx := context.Background()
	if got, err := a.Get(ctx); err != nil || len(got) != 1 {
		t.Fatalf("first load: %v %v", got, err)
	}
	fail = true
	for range 5 {
		if got, err := a.Get(ctx); err != nil || len(got) != 1 {
			t.Fatalf("during an outage: %v %v", got, err)
		}
	}
	// One failed refresh, then no more asking until the retry interval.
	if calls != 2 {
		t.Fatalf("source asked %d times, want 2", calls)
	}
}

func TestAnchorsFailClosedWithoutAnySet(t *testing.T) {
	for name, src := range map[string]Source{
		"error": func(context.Context) ([]*x509.Certificate, error) { return nil, errors.New("down") },
		"empty": func(context.Context) ([]*x509.Certificate, error) { return nil, nil },
	} {
		if _, err := NewAnchors(src, time.Minute, nil).Get(context.Background()); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
