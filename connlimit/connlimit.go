// Package connlimit bounds what clients hold open: connections in all and
// per source IP (a net.Listener), and gRPC streams in all (a tap handle).
//
// The listener bounds the connections a listener holds open: in all,
// and per source IP, so that one peer cannot take every slot. A connection
// beyond a bound is closed as soon as it is accepted, before its TLS
// handshake costs anything; the client sees the connection reset and
// retries with backoff as it would for any transport failure.
//
// In Kubernetes every pod has an IP of its own, but hostNetwork pods share
// their node's, and traffic through a SNAT (an off-cluster load balancer,
// externalTrafficPolicy: Cluster) arrives from a few node IPs: the per-IP
// bound must stay well above what such a source legitimately holds.
package connlimit

import (
	"net"
	"sync"
)

// Listener wraps a net.Listener with the bounds.
type Listener struct {
	net.Listener
	maxTotal, maxPerIP int
	// Refused, if set, is called for each connection closed for a bound
	// ("total" or "per_ip"), for metrics.
	Refused func(limit string)

	mu    sync.Mutex
	total int
	perIP map[string]int
}

// New wraps l; a bound <= 0 is no bound.
func New(l net.Listener, maxTotal, maxPerIP int) *Listener {
	return &Listener{Listener: l, maxTotal: maxTotal, maxPerIP: maxPerIP, perIP: map[string]int{}}
}

// Accept returns the next connection within the bounds.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := hostOf(c.RemoteAddr())
		if limit := l.admit(ip); limit != "" {
			c.Close()
			if l.Refused != nil {
				l.Refused(limit)
			}
			continue
		}
		return &conn{Conn: c, release: func() { l.release(ip) }}, nil
	}
}

// Open is the number of connections held, for tests.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

func (l *Listener) admit(ip string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.maxTotal > 0 && l.total >= l.maxTotal:
		return "total"
	case l.maxPerIP > 0 && l.perIP[ip] >= l.maxPerIP:
		return "per_ip"
	}
	l.total++
	l.perIP[ip]++
	return ""
}

func (l *Listener) release(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.perIP[ip]--; l.perIP[ip] <= 0 {
		delete(l.perIP, ip)
	}
}

func hostOf(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP.String()
	}
	h, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return h
}

type conn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
