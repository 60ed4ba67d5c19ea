package connlimit

import (
	"net"
	"testing"
	"time"
)

// accepted dials n connections from 127.0.0.1 and returns those the
// listener accepted within a moment.
func TestBounds(t *testing.T) {
	tests := []struct {
		name            string
		maxTotal, perIP int
		dial            int
		want            int
	}{
		{"no bounds", 0, 0, 5, 5},
		{"per-IP bound", 0, 3, 5, 3},
		{"total bound", 2, 10, 5, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			l := New(inner, tt.maxTotal, tt.perIP)
			defer l.Close()
			accepted := make(chan net.Conn, 100)
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					accepted <- c
				}
			}()
			var clients []net.Conn
			for range tt.dial {
				c, err := net.Dial("tcp", inner.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				clients = append(clients, c)
			}
			defer func() {
				for _, c := range clients {
					c.Close()
				}
			}()
			var got []net.Conn
			timeout := time.After(300 * time.Millisecond)
		collect:
			for {
				select {
				case c := <-accepted:
					got = append(got, c)
				case <-timeout:
					break collect
				}
			}
			if len(got) != tt.want || l.Open() != tt.want {
				t.Fatalf("accepted %d (open %d), want %d", len(got), l.Open(), tt.want)
			}
			// Closing one frees its slot (twice is once).
			got[0].Close()
			got[0].Close()
			if l.Open() != tt.want-1 {
				t.Fatalf("open %d after a close, want %d", l.Open(), tt.want-1)
			}
		})
	}
}
