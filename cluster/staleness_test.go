package cluster

import (
	"bytes"
	"strings"
	"testing"
)

func TestReadLimitedRefusesOversizedBodies(t *testing.T) {
	for _, tc := range []struct {
		name    string
		size    int
		wantErr bool
	}{
		{"empty", 0, false},
		{"at the limit", MaxDocumentBytes, false},
		{"one byte over", MaxDocumentBytes + 1, true},
		{"far over", 4 * MaxDocumentBytes, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := readLimited(bytes.NewReader(make([]byte, tc.size)), MaxDocumentBytes, "/openid/v1/jwks")
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), "1048576 byte limit") {
					t.Fatalf("err = %v, want one naming the limit", err)
				}
				return
			}
			if err != nil || len(b) != tc.size {
				t.Fatalf("got %d bytes, err %v; want %d", len(b), err, tc.size)
			}
		})
	}
}
