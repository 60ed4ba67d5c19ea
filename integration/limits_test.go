package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/broker/backends/backendtest"
	"github.com/meshca/broker/broker"
	"github.com/meshca/broker/caclient"
	"github.com/meshca/broker/config"
	"github.com/meshca/broker/devissuer"
)

const createCertificatePath = "/istio.v1.auth.IstioCertificateService/CreateCertificate"

// startLimitsBroker starts a broker with JWKS authn (no API server needed)
// and the local CA, the limits at their defaults unless mod changes them.
func startLimitsBroker(t *testing.T, mod func(*config.Config)) (*broker.Broker, string) {
	iss, err := devissuer.New(devissuer.DefaultIssuer)
	if err != nil {
		t.Fatal(err)
	}
	jwks := backendtest.WriteFile(t, "jwks.json", mustJWKS(t, iss))
	tok, _ := iss.Token("shop", "cart", []string{"istio-ca"}, time.Hour)
	b := startBroker(t, nil, func(c *config.Config) {
		c.Backend = config.Backend{Type: "local", Settings: backendSettings(t, map[string]any{"dir": t.TempDir()})}
		c.Authn.JWKS = []config.JWKS{{Issuer: iss.URL, File: jwks, ClusterID: "Kubernetes"}}
		if mod != nil {
			mod(c)
		}
	})
	return b, tok
}

// hostileConn is an HTTP/2 client that ignores the server's SETTINGS, as
// an attacker's would.
type hostileConn struct {
	c  *tls.Conn
	fr *http2.Framer
	mu sync.Mutex
}

func dialHostile(t testing.TB, addr string) *hostileConn {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, ServerName: caclient.DefaultServerName})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	h := &hostileConn{c: c, fr: http2.NewFramer(c, bufio.NewReader(c))}
	if err := h.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return h
}

// headerBlock is a request's HPACK block with an authorization header of
// tokenBytes.
func headerBlock(tokenBytes int) []byte {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "https"}, {":path", createCertificatePath},
		{":authority", caclient.DefaultServerName}, {"content-type", "application/grpc"}, {"te", "trailers"},
		{"authorization", "Bearer " + strings.Repeat("a", tokenBytes)},
	} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return buf.Bytes()
}

// openStream sends block as HEADERS and CONTINUATION frames and no body,
// leaving the stream open.
func (h *hostileConn) openStream(id uint32, block []byte) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	const frame = 16 << 10
	first := block[:min(frame, len(block))]
	rest := block[len(first):]
	if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndHeaders: len(rest) == 0}); err != nil {
		return err
	}
	for len(rest) > 0 {
		n := min(frame, len(rest))
		if err := h.fr.WriteContinuation(id, n == len(rest), rest[:n]); err != nil {
			return err
		}
		rest = rest[n:]
	}
	return nil
}

// requestsSeen is the broker's count of CreateCertificate requests that
// reached the handler (every one is audited and counted).
func requestsSeen(t testing.TB, b *broker.Broker) int {
	t.Helper()
	resp, err := http.Get("http://" + b.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	n := 0
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "meshca_certificate_requests_total{") {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			n += int(v)
		}
	}
	return n
}

func TestEightMiBHeaderIsRefusedBeforeTheHandler(t *testing.T) {
	testenvRequired(t)
	b, tok := startLimitsBroker(t, nil)

	h := dialHostile(t, b.Addr())
	defer h.c.Close()
	if err := h.openStream(1, headerBlock(8<<20)); err != nil {
		t.Logf("writing the 8 MiB header block stopped: %v", err)
	}
	// What the client sees for its stream.
	h.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var seen []string
	dec := hpack.NewDecoder(4096, nil)
read:
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			seen = append(seen, fmt.Sprintf("read: %v", err))
			break
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if v, ok := f.Value(http2.SettingMaxHeaderListSize); ok {
				seen = append(seen, fmt.Sprintf("SETTINGS_MAX_HEADER_LIST_SIZE=%d", v))
			}
		case *http2.HeadersFrame:
			fields, _ := dec.DecodeFull(f.HeaderBlockFragment())
			seen = append(seen, fmt.Sprintf("HEADERS %v", fields))
			if f.StreamEnded() {
				break read
			}
		case *http2.RSTStreamFrame:
			seen = append(seen, fmt.Sprintf("RST_STREAM %v", f.ErrCode))
			break read
		case *http2.GoAwayFrame:
			seen = append(seen, fmt.Sprintf("GOAWAY %v", f.ErrCode))
			break read
		}
	}
	t.Logf("the client saw: %s", strings.Join(seen, "; "))

	if n := requestsSeen(t, b); n != 0 {
		t.Fatalf("%d requests reached the handler; the 8 MiB header must be refused by the transport", n)
	}
	// The real gRPC client honours the server's setting and refuses to send.
	key, _ := caclient.NewKey(true)
	_, err := dial(t, b, nil).CreateCertificate(context.Background(), caclient.Request{Key: key, SPIFFEID: cartID, Token: strings.Repeat("a", 8<<20), TTL: time.Hour})
	t.Logf("grpc-go client with an 8 MiB token: %v", err)
	if err == nil {
		t.Fatal("an 8 MiB token was accepted")
	}
	// The counter works: a real request is counted.
	key, _ = caclient.NewKey(true)
	if _, err := dial(t, b, nil).CreateCertificate(context.Background(), caclient.Request{Key: key, SPIFFEID: cartID, Token: tok, TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if n := requestsSeen(t, b); n != 1 {
		t.Fatalf("%d requests counted after one real request, want 1", n)
	}
}

// metricLine is the broker's metrics line containing match.
func metricLine(t testing.TB, b *broker.Broker, match string) string {
	t.Helper()
	resp, err := http.Get("http://" + b.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if strings.Contains(line, match) && !strings.HasPrefix(line, "#") {
			return line
		}
	}
	return "no " + match
}

func heapInuse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestMemoryUnderHostileConnections: N connections each hold every stream
// the server allows open with headers just under the limit and no body.
// The broker runs in this process; the hostile clients share one header
// block, so the heap growth is the broker's (and the clients' small
// per-connection buffers).
func TestMemoryUnderHostileConnections(t *testing.T) {
	testenvRequired(t)
	ns := []int{50, 200}
	if v := os.Getenv("MESHCA_HOSTILE_CONNS"); v != "" {
		ns = nil
		for _, s := range strings.Split(v, ",") {
			n, _ := strconv.Atoi(s)
			ns = append(ns, n)
		}
	}
	for _, n := range ns {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			b, tok := startLimitsBroker(t, nil)
			cfg := config.Config{}
			cfg.ApplyDefaults()
			lim := cfg.Limits
			block := headerBlock(lim.MaxHeaderListBytes - 600)
			base := heapInuse()
			var conns []*hostileConn
			for range n {
				h := dialHostile(t, b.Addr())
				conns = append(conns, h)
				go io.Copy(io.Discard, h.c) // read what the server sends
				for s := range lim.MaxConcurrentStreams + 10 {
					if err := h.openStream(uint32(2*s+1), block); err != nil {
						break
					}
				}
			}
			time.Sleep(2 * time.Second)
			held := heapInuse()
			grew := float64(held-min(base, held)) / (1 << 20)
			t.Logf("N=%d connections x %d streams (header list %d bytes, HPACK block %d): broker heap in use %.1f MiB -> %.1f MiB (+%.1f MiB); goroutines %d; %s",
				n, lim.MaxConcurrentStreams, lim.MaxHeaderListBytes-600+200, len(block), float64(base)/(1<<20), float64(held)/(1<<20), grew, runtime.NumGoroutine(), metricLine(t, b, `limit="streams_total"`))
			// Bounded by maxStreams whatever N: at 16 KiB of headers and a
			// goroutine a stream, 4096 streams stay well under 256 MiB.
			if limit := 256.0; grew > limit {
				t.Errorf("heap grew %.1f MiB under %d hostile connections, more than %.0f MiB", grew, n, limit)
			}
			// While the hostile streams hold every slot, a real client is
			// refused at once with ResourceExhausted (retryable), and
			// served as soon as they go (closed, or at limits.maxStreamAge).
			key, _ := caclient.NewKey(true)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			client := dial(t, b, nil)
			req := caclient.Request{Key: key, SPIFFEID: cartID, Token: tok, TTL: time.Hour}
			_, err := client.CreateCertificate(ctx, req)
			t.Logf("a real request under the hostile load: %v", err)
			if err != nil && status.Code(err) != codes.ResourceExhausted {
				t.Errorf("a real request under the hostile load: %v, want success or ResourceExhausted", err)
			}
			for _, h := range conns {
				h.c.Close()
			}
			for {
				if _, err = client.CreateCertificate(ctx, req); err == nil || ctx.Err() != nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("after the hostile connections closed: %v", err)
			}
		})
	}
}

// TestConnectionsPerIPBound: beyond the bound, connections from one IP
// are closed at once, and a slot frees when a connection closes.
func TestConnectionsPerIPBound(t *testing.T) {
	testenvRequired(t)
	b, _ := startLimitsBroker(t, func(c *config.Config) { c.Limits.MaxConnectionsPerIP = 5 })
	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	handshake := func() (net.Conn, error) {
		c, err := tls.Dial("tcp", b.Addr(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
		return c, err
	}
	for i := range 5 {
		c, err := handshake()
		if err != nil {
			t.Fatalf("connection %d within the bound: %v", i, err)
		}
		open = append(open, c)
	}
	if _, err := handshake(); err == nil {
		t.Fatal("a sixth connection from the same IP completed its handshake")
	} else {
		t.Logf("sixth connection: %v", err)
	}
	open[0].Close()
	open = open[1:]
	var err error
	for range 20 { // the release follows the server's read of the close
		var c net.Conn
		if c, err = handshake(); err == nil {
			open = append(open, c)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("after a close, a new connection: %v", err)
	}
}
