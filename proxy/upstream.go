package proxy

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpproxy"
)

// Two upstream clients, one per answer shape:
//
//   - Streamed requests go through net/http (Config.Transport). A stream is
//     cancelled from other goroutines (idle timer, client gone, shutdown),
//     which the fasthttp client cannot do safely (streaming-on-fiber.md R10).
//   - Non-streamed requests go through fasthttp's client: the body is read
//     whole inside Do, so nothing closes it from another goroutine, and it
//     costs about half of net/http's CPU per request (make bench, S1): no
//     read and write goroutines per connection, no header maps.
//
// Both honour HTTP_PROXY, HTTPS_PROXY and NO_PROXY and speak HTTP/1.1.

// fastUpstreamReadBuffer bounds one upstream response's headers; providers
// behind CDNs send several KiB of them, over fasthttp's 4 KiB default.
const fastUpstreamReadBuffer = 16 << 10

// errUpstreamClosed is what a dial returns once shutdown has begun.
var errUpstreamClosed = errors.New("upstream client closed")

// fastUpstream is the non-streamed client plus the set of its connections,
// so that shutdown can end requests in flight: fasthttp has no
// cancellation, but a closed connection fails its Do at once.
type fastUpstream struct {
	client *fasthttp.Client
	dial   fasthttp.DialFunc

	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
	closed bool
}

func newFastUpstream(base context.Context, responseLimit int) (*fastUpstream, error) {
	d := &fasthttpproxy.Dialer{
		TCPDialer:     fasthttp.TCPDialer{Concurrency: 0, DNSCacheDuration: time.Minute},
		Timeout:       5 * time.Second,
		DialDualStack: true,
	}
	dial, err := d.GetDialFunc(true)
	if err != nil {
		return nil, err
	}
	u := &fastUpstream{dial: dial, conns: map[*trackedConn]struct{}{}}
	u.client = &fasthttp.Client{
		Dial:                u.trackedDial,
		MaxConnsPerHost:     1 << 16,
		MaxIdleConnDuration: 10 * time.Second,
		ReadBufferSize:      fastUpstreamReadBuffer,
		// The live registry's limit is checked per request (call.buffered);
		// this is the hard ceiling above it.
		MaxResponseBodySize:           responseLimit,
		NoDefaultUserAgentHeader:      true,
		DisableHeaderNamesNormalizing: false,
		// Paths were checked as received (uncanonical) and must reach the
		// provider byte for byte.
		DisablePathNormalizing: true,
		RetryIfErr:             retryReplayable,
	}
	context.AfterFunc(base, u.close)
	return u, nil
}

// retryReplayable sends a request a second time only if it is replayable
// in net/http's sense: an idempotent method, or an Idempotency-Key. A POST
// that reached the provider is never sent twice: it may be billed twice.
// net/http also spots a pooled connection the provider closed while idle
// before writing to it; fasthttp does not, so MaxIdleConnDuration stays
// below providers' idle timeouts instead.
func retryReplayable(req *fasthttp.Request, attempts int, err error) (bool, bool) {
	if attempts > 1 || errors.Is(err, fasthttp.ErrTimeout) {
		return false, false
	}
	switch string(req.Header.Method()) {
	case fasthttp.MethodGet, fasthttp.MethodHead, fasthttp.MethodOptions:
		return false, true
	}
	return false, len(req.Header.Peek("Idempotency-Key")) > 0 || len(req.Header.Peek("X-Idempotency-Key")) > 0
}

func (u *fastUpstream) trackedDial(addr string) (net.Conn, error) {
	u.mu.Lock()
	closed := u.closed
	u.mu.Unlock()
	if closed {
		return nil, errUpstreamClosed
	}
	c, err := u.dial(addr)
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, u: u}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		c.Close()
		return nil, errUpstreamClosed
	}
	u.conns[tc] = struct{}{}
	return tc, nil
}

// close ends every request in flight and refuses new connections; it runs
// when the base context is cancelled (shutdown step 3).
func (u *fastUpstream) close() {
	u.mu.Lock()
	u.closed = true
	conns := u.conns
	u.conns = map[*trackedConn]struct{}{}
	u.mu.Unlock()
	for c := range conns {
		c.Conn.Close()
	}
}

type trackedConn struct {
	net.Conn
	u    *fastUpstream
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.u.mu.Lock()
		delete(c.u.conns, c)
		c.u.mu.Unlock()
	})
	return c.Conn.Close()
}
