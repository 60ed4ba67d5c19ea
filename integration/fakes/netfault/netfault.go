// Package netfault is the fakes' network outage switch: a listener that,
// while dropping, closes every open connection and every new one as soon as
// it is accepted, the way a dead load-balancer target looks to a client.
package netfault

import (
	"net"
	"sync"
)

// Listener wraps a net.Listener with an outage switch.
type Listener struct {
	net.Listener
	mu       sync.Mutex
	dropping bool
	conns    map[*conn]struct{}
}

// New wraps l.
func New(l net.Listener) *Listener {
	return &Listener{Listener: l, conns: map[*conn]struct{}{}}
}

// Accept returns the next connection, closing those that arrive while
// dropping.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		if l.dropping {
			l.mu.Unlock()
			_ = c.Close()
			continue
		}
		tc := &conn{Conn: c, l: l}
		l.conns[tc] = struct{}{}
		l.mu.Unlock()
		return tc, nil
	}
}

// SetDropping turns the outage on (closing every open connection) or off.
func (l *Listener) SetDropping(on bool) {
	l.mu.Lock()
	l.dropping = on
	l.mu.Unlock()
	if on {
		l.CloseAll()
	}
}

// CloseAll closes every open connection, as a server restart would.
func (l *Listener) CloseAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c := range l.conns {
		_ = c.Conn.Close()
		delete(l.conns, c)
	}
}

type conn struct {
	net.Conn
	l    *Listener
	once sync.Once
}

func (c *conn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
